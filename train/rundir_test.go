package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

func TestRunDirIsLockedWhileClaimed(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	cfg := Config{Out: out}
	first, err := claimRunDir(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = claimRunDir(cfg)
	if !errors.Is(err, ErrRunDirInUse) || !strings.Contains(err.Error(), out) || !strings.Contains(err.Error(), "process ") {
		t.Fatalf("second claim: %v; want %v naming %s and the holder", err, ErrRunDirInUse, out)
	}
	first.release()
	again, err := claimRunDir(cfg)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again.release()
}

func TestRunDirRefusesEarlierResults(t *testing.T) {
	for _, name := range []string{"adapter_model.safetensors", "adapter_config.json", "model.safetensors", "metrics.jsonl", "checkpoint-3/trainer_state.json"} {
		out := t.TempDir()
		os.MkdirAll(filepath.Dir(filepath.Join(out, name)), 0o755)
		os.WriteFile(filepath.Join(out, name), []byte("{}\n"), 0o644)
		_, err := claimRunDir(Config{Out: out})
		want := strings.TrimSuffix(name, "/trainer_state.json")
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--overwrite") || !strings.Contains(err.Error(), "--resume") {
			t.Errorf("%s: %v; want a refusal naming it, --resume and --overwrite", name, err)
			continue
		}
		for _, cfg := range []Config{{Out: out, Resume: true}, {Out: out, Overwrite: true}} {
			d, err := claimRunDir(cfg)
			if err != nil {
				t.Errorf("%s with %+v: %v", name, cfg, err)
				continue
			}
			d.release()
		}
		if err := clearResults(out); err != nil {
			t.Fatal(err)
		}
		if found, _ := earlierResults(out); len(found) != 0 {
			t.Errorf("%s: --overwrite left %v", name, found)
		}
	}
	// A run that failed before its first step left an empty log and its
	// config: nothing to lose.
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, MetricsFileName), nil, 0o644)
	os.WriteFile(filepath.Join(out, ConfigFileName), []byte("rank: 4\n"), 0o644)
	d, err := claimRunDir(Config{Out: out})
	if err != nil {
		t.Fatalf("empty metrics and a config: %v", err)
	}
	d.release()
}

func TestRunDirRemovesStaleCheckpointTemporaries(t *testing.T) {
	out := t.TempDir()
	for _, name := range []string{".checkpoint-7.tmp-123", ".checkpoint-12.tmp-9/sub", ".notes", ".checkpoint-x.tmp-1"} {
		os.MkdirAll(filepath.Join(out, name), 0o755)
	}
	d, err := claimRunDir(Config{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	d.release()
	var left []string
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if strings.Join(left, " ") != ".checkpoint-x.tmp-1 .notes "+lockFileName {
		t.Errorf("left %v; want the stale checkpoint folders removed and nothing else", left)
	}
}

func TestRunDirPathChecks(t *testing.T) {
	root := t.TempDir()
	modelDir := filepath.Join(root, "model")
	os.MkdirAll(modelDir, 0o755)
	os.Symlink(modelDir, filepath.Join(root, "model-link"))
	os.Symlink(filepath.Join(root, "nowhere"), filepath.Join(root, "dangling"))
	os.WriteFile(filepath.Join(root, "file"), nil, 0o644)
	for out, want := range map[string]string{
		modelDir:                       "is the model directory",
		filepath.Join(modelDir, "run"): "inside the model directory",
		filepath.Join(root, "model-link", "a", "b"): "inside the model directory",
		filepath.Join(root, "model", "..", "model"): "is the model directory",
		filepath.Join(root, "dangling"):             "symbolic link to " + filepath.Join(root, "nowhere") + ", which does not exist",
		filepath.Join(root, "file"):                 "is a file",
	} {
		_, err := claimRunDir(Config{Out: out, Model: modelDir})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--out %s: %v; want %q", out, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(modelDir, "run")); err == nil {
		t.Error("a refused --out was created inside the model directory")
	}
	d, err := claimRunDir(Config{Out: filepath.Join(root, "model-run"), Model: modelDir})
	if err != nil {
		t.Fatalf("a sibling of the model directory: %v", err)
	}
	d.release()
}

func TestFingerprintDiff(t *testing.T) {
	base := "steps=10 rank=4 model=aaaa data-bytes=10 data-sha256=cccc"
	for _, c := range []struct{ then, now, want string }{
		{base, base, ""},
		{base, "steps=10 rank=8 model=aaaa data-bytes=10 data-sha256=cccc", "rank=4 then, 8 now"},
		{base, "steps=10 rank=4 model=bbbb data-bytes=10 data-sha256=cccc", "model=aaaa then, bbbb now (the base model's files"},
		{base, "steps=10 rank=4 model=aaaa data-bytes=10 data-sha256=dddd", "data-sha256=cccc then, dddd now (the training data's content changed)"},
		{"steps=10", "steps=10 rank=4", "rank not recorded then"},
		{base, "steps=10 model=aaaa data-bytes=10 data-sha256=cccc", "rank=4 then, none now"},
		// --verify on one side only: the file identity decides.
		{base, base + " model-content=eeee", ""},
		{base + " model-content=eeee", base, ""},
		// --verify on both: the content decides.
		{base + " model-content=eeee", "steps=10 rank=4 model=ffff data-bytes=10 data-sha256=cccc model-content=eeee", ""},
		{base + " model-content=eeee", base + " model-content=9999", "model-content=eeee then, 9999 now (the base model's weights differ)"},
	} {
		got := fingerprintDiff(c.then, c.now)
		// Before the model loads, its fields are left out.
		if early := fingerprintDiff(c.then, c.now, fpModel, fpModelContent); strings.Contains(early, "model") {
			t.Errorf("fingerprintDiff(%q, %q) without the model = %q", c.then, c.now, early)
		}
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("fingerprintDiff(%q, %q) = %q; want %q", c.then, c.now, got, c.want)
		}
	}
}

func TestCheckpointsLeft(t *testing.T) {
	out := t.TempDir()
	if got := checkpointsLeft(out); !strings.Contains(got, "no checkpoint was written") {
		t.Errorf("no checkpoint: %q", got)
	}
	for _, step := range []string{"3", "12"} {
		os.MkdirAll(filepath.Join(out, "checkpoint-"+step), 0o755)
		os.WriteFile(filepath.Join(out, "checkpoint-"+step, stateFileName), []byte("{}"), 0o644)
	}
	if got := checkpointsLeft(out); !strings.Contains(got, filepath.Join(out, "checkpoint-12")+", is intact") {
		t.Errorf("two checkpoints: %q", got)
	}
}

func TestRankWarning(t *testing.T) {
	shape := func(p model.Projection) (int, int) {
		if p == model.ProjK {
			return 64, 32
		}
		return 64, 64
	}
	if w := rankWarning(32, []model.Projection{model.ProjQ, model.ProjK}, shape); w != "" {
		t.Errorf("rank 32 of 64x32: %q", w)
	}
	if w := rankWarning(33, []model.Projection{model.ProjQ, model.ProjK}, shape); !strings.Contains(w, "--rank 33 exceeds 32, the smaller side of k_proj (32x64)") {
		t.Errorf("rank 33 of 64x32: %q", w)
	}
}

// --overwrite removes an earlier full-parameter run's shards with their index.
func TestClearResultsRemovesShards(t *testing.T) {
	out := t.TempDir()
	weightMap := map[string]string{}
	for i, name := range []string{"a", "b"} {
		file := fmt.Sprintf("model-%05d-of-00002.safetensors", i+1)
		tensor, _ := safetensors.NewFloatTensor(safetensors.F32, []int{1}, []float32{1})
		if err := safetensors.WriteFile(filepath.Join(out, file), map[string]safetensors.Tensor{name: tensor}, nil); err != nil {
			t.Fatal(err)
		}
		weightMap[name] = file
	}
	index, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	os.WriteFile(filepath.Join(out, safetensors.IndexFileName), index, 0o644)
	os.WriteFile(filepath.Join(out, "notes.txt"), nil, 0o644)
	if err := clearResults(out); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != 1 || entries[0].Name() != "notes.txt" {
		t.Errorf("left %v; want only notes.txt", entries)
	}
}
