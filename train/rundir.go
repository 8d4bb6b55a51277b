package train

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model/safetensors"
)

// lockFileName is the run directory's lock file: a run holds an advisory
// lock on it (flock) from start to exit. The kernel drops the lock when the
// process ends, however it ends, so a crashed run leaves nothing stale.
const lockFileName = ".sparselora.lock"

// ErrRunDirInUse is returned when another process holds --out's lock.
var ErrRunDirInUse = errors.New("in use by another sparselora train")

// runDir is a claimed run directory: locked for this process.
type runDir struct {
	path string
	lock *os.File
}

// claimRunDir makes cfg.Out this run's: it refuses an --out that is a
// dangling link or a file, that is or lies inside the model directory, that
// another run holds, or (without --resume or --overwrite) that holds the
// results of an earlier run; then it removes the temporary folders of
// checkpoints a killed run was writing. Nothing else is removed here: --overwrite
// clears the earlier results only once the run has loaded its inputs
// (clearResults).
func claimRunDir(cfg Config) (*runDir, error) {
	out := cfg.Out
	if err := checkOutPath(out, cfg.Model); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("--out: %w", err)
	}
	lock, err := lockRunDir(out)
	if err != nil {
		return nil, err
	}
	d := &runDir{path: out, lock: lock}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	if !cfg.Resume && !cfg.Overwrite {
		found, err := earlierResults(out)
		if err != nil {
			return nil, err
		}
		if len(found) > 0 {
			return nil, fmt.Errorf("--out %s holds the results of an earlier run (%s): pass --resume to continue it, --overwrite to replace them, or choose another --out",
				out, strings.Join(found, ", "))
		}
	}
	if err := removeStaleTemporaries(out); err != nil {
		return nil, err
	}
	ok = true
	return d, nil
}

func (d *runDir) release() {
	if d.lock != nil {
		d.lock.Close() // closing the descriptor drops the lock
		d.lock = nil
	}
}

// checkOutPath refuses an --out that cannot be a run directory, before
// anything is created: a link to nothing (MkdirAll would only say "file
// exists"), a file, or the model directory or a folder inside it (a run's
// files would mix with the base model's, and --overwrite would remove them).
func checkOutPath(out, modelDir string) error {
	if st, err := os.Lstat(out); err == nil {
		if st.Mode()&fs.ModeSymlink != 0 {
			if _, err := os.Stat(out); errors.Is(err, fs.ErrNotExist) {
				target, _ := os.Readlink(out)
				return fmt.Errorf("--out %s is a symbolic link to %s, which does not exist (create it or choose another --out)", out, target)
			}
		}
		if st, err := os.Stat(out); err == nil && !st.IsDir() {
			return fmt.Errorf("--out %s is a file, not a directory", out)
		}
	}
	if modelDir == "" {
		return nil
	}
	modelSt, err := os.Stat(modelDir)
	if err != nil || !modelSt.IsDir() {
		return nil // the model's loading names the problem
	}
	dir, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("--out %s: %w", out, err)
	}
	// Walk up from --out (which may not exist yet) through the folders that
	// do exist, following links as the file system will.
	for first := true; ; first = false {
		if st, err := os.Stat(dir); err == nil && os.SameFile(st, modelSt) {
			if first {
				return fmt.Errorf("--out %s is the model directory: choose another folder for the run", out)
			}
			return fmt.Errorf("--out %s lies inside the model directory %s: choose a folder outside it for the run", out, modelDir)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		dir = parent
	}
}

// earlierResults names what out holds of an earlier run: its trained
// parameters (adapter or full checkpoint), a non-empty metrics log, or
// checkpoints.
func earlierResults(out string) ([]string, error) {
	var found []string
	for _, name := range []string{lora.WeightsFileName, lora.ConfigFileName, safetensors.SingleFileName, safetensors.IndexFileName} {
		if _, err := os.Lstat(filepath.Join(out, name)); err == nil {
			found = append(found, name)
		}
	}
	if st, err := os.Stat(filepath.Join(out, MetricsFileName)); err == nil && st.Size() > 0 {
		found = append(found, MetricsFileName)
	}
	steps, err := checkpoints(out)
	if err != nil {
		return nil, err
	}
	for _, s := range steps {
		found = append(found, checkpointPrefix+strconv.Itoa(s))
	}
	return found, nil
}

// clearResults removes what earlierResults finds, for --overwrite: the
// earlier run's checkpoints must not be taken for this run's by a later
// --resume or count against --keep, and its parameters must not outlive a
// run that fails before saving its own.
func clearResults(out string) error {
	found, err := earlierResults(out)
	if err != nil {
		return err
	}
	// A sharded full checkpoint: its shards go with its index.
	if sharded, err := safetensors.OpenSharded(filepath.Join(out, safetensors.IndexFileName)); err == nil {
		for _, shard := range sharded.Shards() {
			if filepath.Dir(shard) == filepath.Clean(out) {
				found = append(found, filepath.Base(shard))
			}
		}
		sharded.Close()
	}
	for _, name := range found {
		if err := os.RemoveAll(filepath.Join(out, name)); err != nil {
			return fmt.Errorf("--overwrite: %w", err)
		}
	}
	return nil
}

// removeStaleTemporaries removes the .checkpoint-N.tmp-* folders that a run
// killed while writing a checkpoint left behind. Only a run holding the lock
// calls it, so no live run is writing them.
func removeStaleTemporaries(out string) error {
	entries, err := os.ReadDir(out)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	for _, e := range entries {
		if isCheckpointTemp(e.Name()) {
			if err := os.RemoveAll(filepath.Join(out, e.Name())); err != nil {
				return fmt.Errorf("removing the partial checkpoint %s: %w", filepath.Join(out, e.Name()), err)
			}
		}
	}
	return nil
}

// isCheckpointTemp reports whether name is a checkpoint being written (see
// saveCheckpoint): "." + checkpoint-<step> + ".tmp-" + random.
func isCheckpointTemp(name string) bool {
	rest, ok := strings.CutPrefix(name, "."+checkpointPrefix)
	if !ok {
		return false
	}
	step, _, ok := strings.Cut(rest, ".tmp-")
	if !ok {
		return false
	}
	_, err := strconv.Atoi(step)
	return err == nil
}

// lockRunDir takes out's lock without waiting, writing this process's id into
// the lock file for the message another run prints.
func lockRunDir(out string) (*os.File, error) {
	path := filepath.Join(out, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--out: lock file: %w", err)
	}
	if err := lockFile(f); err != nil {
		holder := ""
		if raw, readErr := os.ReadFile(path); readErr == nil && len(strings.TrimSpace(string(raw))) > 0 {
			holder = fmt.Sprintf(" (process %s, per %s)", strings.TrimSpace(string(raw)), path)
		}
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("--out %s: %w%s", out, ErrRunDirInUse, holder)
		}
		return nil, fmt.Errorf("--out: locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// errLocked is lockFile's error when another open file holds the lock.
var errLocked = errors.New("locked")

// checkpointsLeft says what a run that failed can be resumed from.
func checkpointsLeft(out string) string {
	steps, err := checkpoints(out)
	if err != nil || len(steps) == 0 {
		return fmt.Sprintf("no checkpoint was written to %s (see --save-every)", out)
	}
	return fmt.Sprintf("the last checkpoint, %s, is intact", filepath.Join(out, checkpointPrefix+strconv.Itoa(steps[len(steps)-1])))
}
