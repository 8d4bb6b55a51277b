package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
)

// Files of a checkpoint-<step>/ directory besides the PEFT adapter.
const (
	stateFileName     = "trainer_state.json"
	optimizerFileName = "optimizer.safetensors"
	checkpointPrefix  = "checkpoint-"
)

// trainerState is what a checkpoint stores besides tensors: enough to resume
// the run exactly (the data order follows from the seed and the cursor).
type trainerState struct {
	Step       int         `json:"step"`
	TotalSteps int         `json:"total_steps"`
	Epoch      float64     `json:"epoch"`
	Cursor     data.Cursor `json:"cursor"`
	Tokens     int         `json:"tokens"`
	// Fingerprint is the run's settings that decide its result; a resume
	// with other settings would not reproduce the uninterrupted run.
	Fingerprint string `json:"fingerprint"`
}

// saveCheckpoint writes out/checkpoint-<step> atomically (the trained
// parameters through save, the optimizer moments and the trainer state): into a temporary
// directory first, renamed when complete, so a crash or a second Ctrl-C never
// leaves a partial checkpoint under the final name. Older checkpoints beyond
// keep are removed.
func saveCheckpoint(ctx context.Context, out string, st trainerState, save func(dir string) error, opt *optim.Optimizer, keep int) (string, error) {
	final := filepath.Join(out, fmt.Sprintf("%s%d", checkpointPrefix, st.Step))
	tmp, err := os.MkdirTemp(out, "."+filepath.Base(final)+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp makes it owner-only; a checkpoint is readable like the run's other files.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := save(tmp); err != nil {
		return "", err
	}
	moments := map[string]safetensors.Tensor{}
	for i, p := range opt.Params() {
		m, v, err := opt.Moments(i)
		if err != nil {
			return "", err
		}
		for suffix, t := range map[string]*gpu.Tensor{"exp_avg": m, "exp_avg_sq": v} {
			values, err := t.Download(ctx)
			if err != nil {
				return "", fmt.Errorf("reading the optimizer state of %s: %w", p.Name, err)
			}
			enc, err := safetensors.NewFloatTensor(safetensors.F32, []int{t.Len()}, values)
			if err != nil {
				return "", err
			}
			moments[p.Name+"."+suffix] = enc
		}
	}
	meta := map[string]string{"step": strconv.Itoa(opt.Steps())}
	if err := safetensors.WriteFile(filepath.Join(tmp, optimizerFileName), moments, meta); err != nil {
		return "", err
	}
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(filepath.Join(tmp, stateFileName), append(raw, '\n')); err != nil {
		return "", err
	}
	if err := os.RemoveAll(final); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("completing checkpoint %s: %w", final, err)
	}
	atomicfile.SyncDir(out)
	return final, pruneCheckpoints(out, keep)
}

// checkpoints lists out's complete checkpoints, oldest first.
func checkpoints(out string) ([]int, error) {
	entries, err := os.ReadDir(out)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var steps []int
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, checkpointPrefix) {
			continue
		}
		step, err := strconv.Atoi(strings.TrimPrefix(name, checkpointPrefix))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(out, name, stateFileName)); err == nil {
			steps = append(steps, step)
		}
	}
	slices.Sort(steps)
	return steps, nil
}

func pruneCheckpoints(out string, keep int) error {
	steps, err := checkpoints(out)
	if err != nil {
		return err
	}
	for len(steps) > keep {
		if err := os.RemoveAll(filepath.Join(out, fmt.Sprintf("%s%d", checkpointPrefix, steps[0]))); err != nil {
			return err
		}
		steps = steps[1:]
	}
	return nil
}

// readState reads a checkpoint's trainer_state.json.
func readState(dir string) (trainerState, error) {
	path := filepath.Join(dir, stateFileName)
	raw, err := os.ReadFile(path)
	if err != nil {
		return trainerState{}, err
	}
	return parseState(raw, path, filepath.Base(dir))
}

// parseState parses the trainer_state.json at path of the checkpoint folder
// named folder (checkpoint-<step>), checking what a resume relies on.
func parseState(raw []byte, path, folder string) (trainerState, error) {
	var st trainerState
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case st.Step < 1:
		return st, fmt.Errorf("%s: step %d, want at least 1", path, st.Step)
	case st.TotalSteps < st.Step:
		return st, fmt.Errorf("%s: total_steps %d is below step %d", path, st.TotalSteps, st.Step)
	case folder != fmt.Sprintf("%s%d", checkpointPrefix, st.Step):
		return st, fmt.Errorf("%s: step %d does not match its folder %s", path, st.Step, folder)
	case st.Tokens < 0:
		return st, fmt.Errorf("%s: tokens %d, want 0 or more", path, st.Tokens)
	}
	return st, nil
}

// loadMoments restores the optimizer's moments and step count from a
// checkpoint.
func loadMoments(dir string, opt *optim.Optimizer, steps int) error {
	path := filepath.Join(dir, optimizerFileName)
	f, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for i, p := range opt.Params() {
		m, v, err := opt.Moments(i)
		if err != nil {
			return err
		}
		for suffix, t := range map[string]*gpu.Tensor{"exp_avg": m, "exp_avg_sq": v} {
			values, err := f.ReadFloat32(p.Name + "." + suffix)
			if err != nil {
				return err
			}
			if len(values) != t.Len() {
				return fmt.Errorf("%s: %s.%s has %d values, want %d", path, p.Name, suffix, len(values), t.Len())
			}
			if err := t.Upload(values); err != nil {
				return err
			}
		}
	}
	return opt.SetSteps(steps)
}
