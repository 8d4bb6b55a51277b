package app

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/train"
)

// plan --json's peak is the sum of its parts; checkpointing and 4-bit
// weights lower it; a limit below the plan exits non-zero naming what fits.
func TestPlanCommand(t *testing.T) {
	planOf := func(args ...string) train.MemoryPlan {
		t.Helper()
		code, out, errOut := run(t, append([]string{"plan", "--shape", "llama3-8b", "--rank", "16", "--seq", "2048", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("plan %v: exit %d, stderr %q", args, code, errOut)
		}
		var p train.MemoryPlan
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatalf("plan %v --json: %v in %q", args, err, out)
		}
		var sum uint64
		for _, part := range p.Parts {
			sum += part.Bytes
		}
		if sum != p.PeakBytes || sum == 0 {
			t.Errorf("plan %v: parts sum to %d, peak_bytes %d", args, sum, p.PeakBytes)
		}
		return p
	}
	f32, ckpt := planOf(), planOf("--grad-checkpoint")
	q4 := planOf("--bf16", "--grad-checkpoint", "--quantize", "4")
	if !(q4.PeakBytes < ckpt.PeakBytes && ckpt.PeakBytes < f32.PeakBytes) {
		t.Errorf("peaks: f32 %d, checkpointed %d, 4-bit checkpointed %d; want each smaller", f32.PeakBytes, ckpt.PeakBytes, q4.PeakBytes)
	}
	// LLaMA-3-8B's head is untied: LoRA keeps the f32 embedding table in host
	// memory, full training on the GPU.
	if want := uint64(4 * 128256 * 4096); f32.HostBytes != want {
		t.Errorf("host bytes %d, want the f32 embedding table's %d", f32.HostBytes, want)
	}
	if full := planOf("--full"); full.HostBytes != 0 {
		t.Errorf("--full: host bytes %d, want 0", full.HostBytes)
	}
	segments := planOf("--grad-checkpoint", "--checkpoint-every", "4")
	if segments.Part("saved activations") >= ckpt.Part("saved activations") {
		t.Errorf("saved activations: %d with --checkpoint-every 4, %d without", segments.Part("saved activations"), ckpt.Part("saved activations"))
	}
	if ckpt.Part("recompute scratch") == 0 || f32.Part("recompute scratch") != 0 {
		t.Errorf("recompute scratch: %d with checkpointing, %d without", ckpt.Part("recompute scratch"), f32.Part("recompute scratch"))
	}
	code, _, errOut := run(t, "plan", "--shape", "llama3-8b", "--bf16", "--memory-limit", "16GiB")
	if code == 0 || !strings.Contains(errOut, "limit 16.0 GiB") || !strings.Contains(errOut, "--grad-checkpoint --checkpoint-every 4 --quantize 4: ") {
		t.Errorf("over the limit: exit %d, stderr %q", code, errOut)
	}
	for _, bad := range [][]string{{"--shape", "llama3-8b", "--quantize", "3"}, {"--shape", "llama3-8b", "models/tiny"}, {}, {"--shape", "llama3-8b", "--memory-limit", "lots"}, {"--shape", "llama3-8b", "--checkpoint-every", "4"}} {
		if code, _, _ := run(t, append([]string{"plan"}, bad...)...); code == 0 {
			t.Errorf("plan %v: exit 0", bad)
		}
	}
}

// train --dry-run prints the plan of the run's data without a GPU.
func TestTrainDryRun(t *testing.T) {
	data := filepath.Join("..", "train", "testdata", "sequences.jsonl")
	model := filepath.Join("..", "models", "tiny")
	code, out, errOut := run(t, "train", "--model", model, "--data", data, "--out", t.TempDir(), "--dry-run", "--grad-checkpoint")
	if code != 0 || !strings.Contains(out, "recompute scratch") || !strings.Contains(out, "peak") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = run(t, "train", "--model", model, "--data", data, "--out", t.TempDir(), "--dry-run", "--memory-limit", "1MiB")
	if code == 0 || !strings.Contains(errOut, "--grad-checkpoint: ") {
		t.Errorf("over the limit: exit %d, stderr %q", code, errOut)
	}
}

// bench step --grad-checkpoint, and bench step on 4-bit weights, record each
// variant's planned and measured peak, within 10 % of each other.
func TestBenchStepPeaks(t *testing.T) {
	for _, flags := range [][]string{{"--grad-checkpoint"}, {"--quantize", "4", "--group-size", "32"}} {
		path := filepath.Join(t.TempDir(), "step.json")
		args := append([]string{"bench", "step", "--shape", filepath.Join(fixtures.HF(t, "llama-gqa"), "model", "config.json"),
			"--layers", "2", "--batch", "2", "--seq", "16", "--output-tokens", "4", "--first-layer", "14", "--rank", "4", "--reps", "1",
			"--json", path}, flags...)
		code, out, errOut := run(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", flags, code, errOut)
		}
		if !strings.Contains(out, "GPU memory, SparseLoRA: planned peak") {
			t.Errorf("%v: no memory line in\n%s", flags, out)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			GradCheckpoint bool `json:"grad_checkpoint"`
			QuantizeBits   int  `json:"quantize_bits"`
			Results        []struct {
				Variant  string `json:"variant"`
				Planned  uint64 `json:"planned_peak_bytes"`
				Measured int64  `json:"measured_peak_bytes"`
			} `json:"results"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.GradCheckpoint != (flags[0] == "--grad-checkpoint") || rec.QuantizeBits != map[bool]int{true: 4}[flags[0] == "--quantize"] || len(rec.Results) != 2 {
			t.Fatalf("%v: record %+v", flags, rec)
		}
		for _, r := range rec.Results {
			if d := float64(r.Measured)/float64(r.Planned) - 1; r.Planned == 0 || math.Abs(d) > 0.10 {
				t.Errorf("%v: %s: planned peak %d bytes, measured %d", flags, r.Variant, r.Planned, r.Measured)
			}
		}
	}
}
