package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// TestMemoryPlanMatchesMeasuredPeak builds what a LoRA run allocates (model,
// adapters, AdamW, workspace, trainer) on a small config, runs a step, and
// compares the device's measured peak of live buffer bytes with the plan:
// within 10 %, without checkpointing, with it, and with checkpoint segments
// of 2 layers: each must need less memory than the one before.
func TestMemoryPlanMatchesMeasuredPeak(t *testing.T) {
	const raw = `{"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 352,
		"num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
		"max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": false}`
	cfg, err := model.ParseConfig([]byte(raw), "plan test")
	if err != nil {
		t.Fatal(err)
	}
	const rows, seq, rank = 2, 64, 8
	targets := model.Projections
	var peaks []int64
	for _, opts := range []model.WorkspaceOptions{{}, {GradCheckpoint: true}, {GradCheckpoint: true, CheckpointEvery: 2}} {
		measured := measureStepPeak(t, cfg, Settings{
			Model:  ModelSource{Random: cfg, MaxSeq: cfg.MaxPositionEmbeddings, Seed: 7, DType: gpu.F32},
			Params: ParamSource{LoRA: lora.Config{Rank: rank, Alpha: 16, Targets: targets}, Seed: 3},
			Rows:   rows, Seq: seq,
			Workspace: opts,
		}, 1, nil)
		checkPlan(t, fmt.Sprintf("%+v", opts), measured, PlanMemory(cfg, MemorySettings{Rows: rows, Seq: seq, GradAccum: 1, WeightDType: gpu.F32, Rank: rank,
			Targets: targets, GradCheckpoint: opts.GradCheckpoint, CheckpointEvery: opts.CheckpointEvery, Limits: testDevice.Limits}))
		if len(peaks) > 0 && measured >= peaks[len(peaks)-1] {
			t.Errorf("%+v: measured peak %d bytes, not below the previous variant's %d", opts, measured, peaks[len(peaks)-1])
		}
		peaks = append(peaks, measured)
	}
}

// measureStepPeak builds s (a random model of cfg; AdamW and a one-step
// constant schedule filled in) on the test device, runs one step of
// gradAccum random micro-batches and returns the peak bytes above what was
// live before; check, when set, inspects the trainer first.
func measureStepPeak(t *testing.T, cfg *model.Config, s Settings, gradAccum int, check func(*Trainer)) int64 {
	t.Helper()
	s.AdamW = optim.DefaultAdamWConfig()
	s.Schedule = optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 1, BaseRate: 1e-3}
	base := testDevice.LiveBytes()
	testDevice.ResetPeakBytes()
	tr, err := New(context.Background(), testDevice, s)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Release()
	if check != nil {
		check(tr)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var micro []model.Batch
	for range gradAccum {
		micro = append(micro, batchOf(randomRows(rng, s.Rows, s.Seq, cfg.VocabSize), s.Seq))
	}
	if err := tr.Step(micro, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.ReadStats(context.Background()); err != nil {
		t.Fatal(err)
	}
	return testDevice.PeakBytes() - base
}

// checkPlan compares a measured peak with the plan: within 10 % (the
// recorder's buffers are estimated).
func checkPlan(t *testing.T, what string, measured int64, plan MemoryPlan) {
	t.Helper()
	d := float64(measured)/float64(plan.PeakBytes) - 1
	t.Logf("%s: planned %d bytes, measured %d (%+.2f %%)", what, plan.PeakBytes, measured, 100*d)
	if math.Abs(d) > 0.10 {
		t.Errorf("%s: planned peak %d bytes, measured %d (%+.2f %%, more than 10 %%); parts %+v", what, plan.PeakBytes, measured, 100*d, plan.Parts)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"16GiB": 16 << 30, "16G": 16 << 30, "12GB": 12e9, "8192 MiB": 8 << 30, "1.5GiB": 3 << 29, "4096": 4096, "": 0} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1GiB", "GiB", "16XB", "0", "NaN"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q): no error", bad)
		}
	}
}

// TestRunGradCheckpoint trains the fixture without --grad-checkpoint, with it,
// and with --checkpoint-every 2 (SparseLoRA after the warm-up): the adapters
// must be byte-identical, and each run's logged peak_bytes within 10 % of its
// plan.
func TestRunGradCheckpoint(t *testing.T) {
	var adapters [3][]byte
	for i, every := range []int{-1, 1, 2} {
		ckpt := every > 0
		out := t.TempDir()
		cfg := smallRun(t, out, 6)
		cfg.SaveEvery, cfg.LogEvery, cfg.WarmupSteps, cfg.GradCheckpoint, cfg.CheckpointEvery = 0, 3, 1, ckpt, max(every, 0)
		plan, err := DryRun(context.Background(), cfg, testDevice.Limits)
		if err != nil {
			t.Fatal(err)
		}
		base := testDevice.LiveBytes()
		res, err := Run(context.Background(), testDevice, cfg, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		if adapters[i], err = os.ReadFile(filepath.Join(res.AdapterDir, "adapter_model.safetensors")); err != nil {
			t.Fatal(err)
		}
		recs := readRecords(t, out)
		if len(recs) == 0 || recs[len(recs)-1].PeakBytes == 0 {
			t.Fatalf("grad-checkpoint %t: no peak_bytes logged: %+v", ckpt, recs)
		}
		measured := recs[len(recs)-1].PeakBytes - base
		d := float64(measured)/float64(plan.Memory.PeakBytes) - 1
		t.Logf("grad-checkpoint %t, every %d: planned %d bytes, measured %d (%+.1f %%)", ckpt, every, plan.Memory.PeakBytes, measured, 100*d)
		if math.Abs(d) > 0.10 {
			t.Errorf("grad-checkpoint %t: planned peak %d bytes, measured %d (%+.1f %%); parts %+v", ckpt, plan.Memory.PeakBytes, measured, 100*d, plan.Memory.Parts)
		}
	}
	if !bytes.Equal(adapters[0], adapters[1]) || !bytes.Equal(adapters[0], adapters[2]) {
		t.Error("the adapter trained with --grad-checkpoint (or --checkpoint-every 2) differs from the one without")
	}
}

// TestRunRefusesOverMemoryLimit: a plan over --memory-limit stops the run
// before it allocates anything, naming settings that need less.
func TestRunRefusesOverMemoryLimit(t *testing.T) {
	cfg := smallRun(t, t.TempDir(), 2)
	cfg.MemoryLimit = "64KiB"
	base := testDevice.LiveBytes()
	testDevice.ResetPeakBytes()
	_, err := Run(context.Background(), testDevice, cfg, Hooks{})
	if !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("error %v, want ErrOutOfMemory", err)
	}
	for _, want := range []string{"limit 0.1 MiB", "--grad-checkpoint: ", "--quantize 4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if peak := testDevice.PeakBytes(); peak != base {
		t.Errorf("the refused run allocated: peak %d bytes, %d live before", peak, base)
	}
}

// TestRunOutOfMemoryKeepsCheckpoints: the device runs out of memory mid-run
// (SetAllocationLimit after step 3, so the step's read-back cannot allocate):
// Run returns the device's out-of-memory error, releases what it allocated
// and writes nothing more; --resume from the last checkpoint then ends with
// the adapter of a run that never failed, byte for byte.
func TestRunOutOfMemoryKeepsCheckpoints(t *testing.T) {
	ctx := context.Background()
	configure := func(out string) Config {
		cfg := smallRun(t, out, 5)
		cfg.SaveEvery, cfg.LogEvery = 2, 1
		return cfg
	}
	whole := t.TempDir()
	if _, err := Run(ctx, testDevice, configure(whole), Hooks{}); err != nil {
		t.Fatal(err)
	}

	out := t.TempDir()
	cfg := configure(out)
	base := testDevice.LiveBytes()
	defer testDevice.SetAllocationLimit(0)
	_, err := Run(ctx, testDevice, cfg, Hooks{Step: func(step, _ int, _ float64) {
		if step == 3 {
			testDevice.SetAllocationLimit(testDevice.LiveBytes())
		}
	}})
	testDevice.SetAllocationLimit(0)
	t.Logf("the failed run: %v", err)
	var gpuErr *gpu.Error
	if !errors.As(err, &gpuErr) || gpuErr.Type != "out-of-memory" {
		t.Fatalf("error %v, want the device's out-of-memory error", err)
	}
	if live := testDevice.LiveBytes(); live != base {
		t.Errorf("after the failed run %d bytes are live, %d before it", live, base)
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if strings.HasPrefix(e.Name(), "checkpoint-") && e.Name() != "checkpoint-2" {
			t.Errorf("the failed run left %s", e.Name())
		}
	}
	if !slices.Contains(names, "checkpoint-2") {
		t.Fatalf("checkpoint-2 is missing after the failure: %v", names)
	}

	cfg.Resume = true
	if _, err := Run(ctx, testDevice, cfg, Hooks{}); err != nil {
		t.Fatalf("resuming after the failure: %v", err)
	}
	want, _ := os.ReadFile(filepath.Join(whole, "adapter_model.safetensors"))
	got, err := os.ReadFile(filepath.Join(out, "adapter_model.safetensors"))
	if err != nil || len(want) == 0 || !bytes.Equal(got, want) {
		t.Errorf("the adapter resumed after running out of memory differs from the uninterrupted run's (%v)", err)
	}
}
