package train

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
)

// smallRun is a run on the llama-gqa fixture model with pre-tokenized
// sequences (learnable arithmetic progressions; completions scored).
func smallRun(t *testing.T, out string, steps int) Config {
	t.Helper()
	c := DefaultConfig()
	c.Model = filepath.Join(fixtures.HF(t, "llama-gqa"), "model")
	c.Data = filepath.Join("testdata", "sequences.jsonl")
	c.Out = out
	c.Rank, c.Alpha, c.Targets = 4, 8, "q,v,gate,down"
	c.BatchSize, c.GradAccum = 3, 2
	c.MaxSteps, c.LR, c.WarmupSteps = steps, 1e-2, 2
	c.LogEvery, c.SaveEvery, c.Keep = 5, 10, 5
	c.SVDCacheDir = filepath.Join(t.TempDir(), "svd")
	return c
}

func readRecords(t *testing.T, dir string) []Record {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, MetricsFileName))
	if err != nil {
		t.Fatal(err)
	}
	var recs []Record
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", MetricsFileName, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestRunTrainsAndResumesBitForBit trains 30 steps (SparseLoRA after the
// warm-up), checks that the loss falls, then resumes a copy of the step-20
// checkpoint and checks that it ends with the same adapter, byte for byte.
func TestRunTrainsAndResumesBitForBit(t *testing.T) {
	ctx := context.Background()
	out := t.TempDir()
	cfg := smallRun(t, out, 30)
	cfg.EvalData, cfg.EvalEvery = cfg.Data, 15
	var logged []Record
	res, err := Run(ctx, testDevice, cfg, Hooks{Log: func(r Record) { logged = append(logged, r) }})
	if err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, out)
	if len(recs) != 6 || len(logged) != 6 || recs[5].Step != 30 {
		t.Fatalf("%d records in %s (%d logged), want steps 5..30", len(recs), MetricsFileName, len(logged))
	}
	first, last := recs[0].Loss, recs[len(recs)-1].Loss
	if !(last < 0.75*first) {
		t.Errorf("loss %g at step 5, %g at step 30: it did not fall", first, last)
	}
	if res.Eval == nil || recs[2].EvalLoss == nil || recs[5].EvalLoss == nil || recs[1].EvalLoss != nil {
		t.Errorf("evaluation expected at steps 15 and 30 only")
	}
	if !recs[5].Sparse || recs[0].Sparse && recs[0].Step <= 1 || recs[5].FLOPsRatio >= 1 {
		t.Errorf("the run should be sparse after the warm-up with a FLOP ratio below 1: %+v", recs[5])
	}
	steps, err := checkpoints(out)
	if err != nil || len(steps) != 3 {
		t.Fatalf("checkpoints %v (%v), want 10, 20, 30", steps, err)
	}

	resumed := t.TempDir()
	copyDir(t, filepath.Join(out, "checkpoint-20"), filepath.Join(resumed, "checkpoint-20"))
	cfg2 := cfg
	cfg2.Out, cfg2.Resume = resumed, true
	if _, err := Run(ctx, testDevice, cfg2, Hooks{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(out, "adapter_model.safetensors"))
	got, err := os.ReadFile(filepath.Join(resumed, "adapter_model.safetensors"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("the resumed run's adapter differs from the uninterrupted run's (%v)", err)
	}
	if recs2 := readRecords(t, resumed); len(recs2) != 2 || recs2[0].Step != 25 || recs2[1].Loss != recs[5].Loss {
		t.Errorf("resumed metrics %+v, want steps 25 and 30 with the same loss", recs2)
	}

	// A resume with other settings would not reproduce the run: refused.
	cfg3 := cfg2
	cfg3.LR = 2e-2
	if _, err := Run(ctx, testDevice, cfg3, Hooks{}); err == nil || !strings.Contains(err.Error(), "lr=0.01 then, 0.02 now") {
		t.Errorf("resume with another learning rate: %v, want a refusal", err)
	}
	// A new run into a directory with checkpoints is refused without --resume.
	cfg4 := cfg
	cfg4.Out = resumed
	if _, err := Run(ctx, testDevice, cfg4, Hooks{}); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("new run over checkpoints: %v, want a refusal naming --resume", err)
	}
}

// TestRunInterruptedWritesCheckpoint cancels the context during a run: the
// run stops after the current step with a checkpoint of it.
func TestRunInterruptedWritesCheckpoint(t *testing.T) {
	out := t.TempDir()
	cfg := smallRun(t, out, 40)
	cfg.SaveEvery, cfg.Sparsity = 0, "dense"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := Run(ctx, testDevice, cfg, Hooks{Step: func(step, total int, epoch float64) {
		if step == 7 {
			cancel()
		}
	}})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("error %v, want ErrInterrupted", err)
	}
	if res.Steps != 7 || !strings.HasSuffix(res.LastCheckpnt, "checkpoint-7") {
		t.Fatalf("stopped after %d steps with checkpoint %q, want 7", res.Steps, res.LastCheckpnt)
	}
	st, err := readState(res.LastCheckpnt)
	if err != nil || st.Step != 7 || st.Cursor.Step != 7%4 || st.Cursor.Epoch != 1 {
		t.Errorf("checkpoint state %+v (%v), want step 7 = epoch 1 step 3 (4 steps an epoch)", st, err)
	}
}

// TestRunStopsOnNonFiniteLoss makes the update blow the adapter up: the run
// stops with an error naming the step.
func TestRunStopsOnNonFiniteLoss(t *testing.T) {
	cfg := smallRun(t, t.TempDir(), 20)
	cfg.LR, cfg.WarmupSteps, cfg.MaxGradNorm, cfg.LogEvery, cfg.Sparsity = 1e36, 0, 0, 1, "dense"
	// Adapters on every projection: with q, v, gate and down alone the real
	// tokens saturate to a finite uniform loss (padding, which once turned it
	// into NaN, is no longer computed).
	cfg.Targets = "q,k,v,o,gate,up,down"
	_, err := Run(context.Background(), testDevice, cfg, Hooks{})
	if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "step ") {
		t.Fatalf("error %v, want a non-finite loss naming the step", err)
	}
	// It blows up before the first checkpoint (step 10): none to speak of.
	if !strings.Contains(err.Error(), "no checkpoint was written") || strings.Contains(err.Error(), "intact") {
		t.Errorf("error %v; want it to say that no checkpoint was written", err)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConfigValidateNamesTheFlag(t *testing.T) {
	base := DefaultConfig()
	base.Model, base.Data, base.Out = "m", "d.jsonl", "o"
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for flag, edit := range map[string]func(*Config){
		"--rank":             func(c *Config) { c.Rank = 0 },
		"--batch-size":       func(c *Config) { c.BatchSize = -1 },
		"--grad-accum":       func(c *Config) { c.GradAccum = 0 },
		"--lr":               func(c *Config) { c.LR = -1 },
		"--schedule":         func(c *Config) { c.Schedule = "step" },
		"--warmup-ratio":     func(c *Config) { c.WarmupRatio = 1.5 },
		"--targets":          func(c *Config) { c.Targets = "q,qq" },
		"--keep":             func(c *Config) { c.Keep = 0 },
		"--log-every":        func(c *Config) { c.LogEvery = 0 },
		"--max-seq-len":      func(c *Config) { c.MaxSeqLen = 1 },
		"--epochs":           func(c *Config) { c.Epochs = 0 },
		"--max-grad-norm":    func(c *Config) { c.MaxGradNorm = -2 },
		"--model":            func(c *Config) { c.Model = "" },
		"--checkpoint-every": func(c *Config) { c.CheckpointEvery = 4 },
	} {
		c := base
		edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("%s: error %v, want one naming the flag", flag, err)
		}
	}
}

// TestRunFullFromRandomInit pretrains a small model from --init-config on the
// sequences with every weight trainable: the loss falls, the output is an HF
// checkpoint that loads, and a resumed run ends with identical weights.
func TestRunFullFromRandomInit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	config := filepath.Join(dir, "config.json")
	os.WriteFile(config, []byte(`{"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
		"max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": true, "initializer_range": 0.05}`), 0o644)
	out := filepath.Join(dir, "run")
	cfg := smallRun(t, out, 24)
	cfg.Model, cfg.InitConfig, cfg.Full, cfg.Sparsity = "", config, true, "auto"
	cfg.LR, cfg.WeightDecay, cfg.SaveEvery, cfg.LogEvery = 3e-3, 0.01, 12, 4
	if _, err := Run(ctx, testDevice, cfg, Hooks{}); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, out)
	if first, last := recs[0].Loss, recs[len(recs)-1].Loss; !(last < 0.8*first) || recs[0].FLOPsRatio != 1 {
		t.Errorf("full training: loss %g -> %g (want a clear fall), FLOP ratio %g (want 1)", first, last, recs[0].FLOPsRatio)
	}
	m, err := model.Load(testDevice, out, gpu.F32)
	if err != nil {
		t.Fatalf("the output does not load as a model: %v", err)
	}
	m.Release()

	resumed := filepath.Join(dir, "resumed")
	copyDir(t, filepath.Join(out, "checkpoint-12"), filepath.Join(resumed, "checkpoint-12"))
	cfg.Out, cfg.Resume = resumed, true
	if _, err := Run(ctx, testDevice, cfg, Hooks{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(out, "model.safetensors"))
	got, err := os.ReadFile(filepath.Join(resumed, "model.safetensors"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("the resumed full run's weights differ from the uninterrupted run's (%v)", err)
	}
}

// TestMeasuredFLOPsOfAPartialMicroBatch ends a sparse run on a micro-batch
// with one example in two rows (3 examples, batch 2): the FLOPs recorded from
// the dispatches equal the analytic count (the attention's causal pairs are
// counted per row, not as if the real tokens filled the rows evenly).
func TestMeasuredFLOPsOfAPartialMicroBatch(t *testing.T) {
	data := filepath.Join(t.TempDir(), "three.jsonl")
	raw, err := os.ReadFile(filepath.Join("testdata", "sequences.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(raw, []byte("\n"))
	os.WriteFile(data, bytes.Join(lines[:3], nil), 0o644)
	for _, steps := range []int{3, 4} { // 3 ends on a full micro-batch, 4 on a partial one
		c := DefaultConfig()
		c.Model, c.Data, c.Out = filepath.Join("..", "models", "tiny"), data, t.TempDir()
		c.Rank, c.Alpha, c.BatchSize, c.LR, c.NoShuffle, c.MaxSteps = 4, 8, 2, 1e-3, true, steps
		c.Sparsity, c.SVDCacheDir = filepath.Join("..", "models", "tiny", "sparsity.yaml"), t.TempDir()
		res, err := Run(context.Background(), testDevice, c, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		if !(res.StepAnalytic > 0 && res.StepAnalytic < 1) || math.Abs(res.StepMeasured-res.StepAnalytic) > 1e-9*res.StepAnalytic {
			t.Errorf("%d steps: FLOP ratio analytic %.6f, measured from the dispatches %.6f; want them equal", steps, res.StepAnalytic, res.StepMeasured)
		}
	}
}
