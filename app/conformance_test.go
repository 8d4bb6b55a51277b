package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
)

// The acceptance test of the model work: forward, backward, two AdamW steps and
// greedy generation match Hugging Face transformers + PEFT on both fixtures,
// with f32 and with bf16 frozen weights, and with the workgroup-tree
// reductions of adapters without subgroups (--no-subgroups) as well as the
// adapter's own.
func TestConformanceOnFixtures(t *testing.T) {
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		for _, flag := range []string{"", "--bf16", "--no-subgroups"} {
			args := []string{"conformance", fixtures.HF(t, name)}
			if flag != "" {
				args = []string{"conformance", flag, fixtures.HF(t, name)}
			}
			code, out, errOut := run(t, args...)
			if code != 0 || !strings.Contains(out, "checks pass") {
				t.Errorf("%v: exit %d\n%s%s", args, code, out, errOut)
			}
		}
	}
}

// TestQuantizedConformance checks a model quantized at load against its
// dequantized twin (qwen2-bias: tied LM head through the quantized
// embedding), and that a bad quantization is refused before it runs.
func TestQuantizedConformance(t *testing.T) {
	for _, c := range []struct{ fixture, bits, group string }{{"llama-gqa", "4", "32"}, {"qwen2-bias", "8", "32"}} {
		args := []string{"conformance", "--quantize", c.bits, "--group-size", c.group, fixtures.HF(t, c.fixture)}
		code, out, errOut := run(t, args...)
		if code != 0 || !strings.Contains(out, "all 7 checks pass") {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	code, out, errOut := run(t, "conformance", "--quantize", "3", fixtures.HF(t, "llama-gqa"))
	if code == 0 || !strings.Contains(errOut, "--quantize 3") {
		t.Errorf("--quantize 3: exit %d\n%s%s", code, out, errOut)
	}
}

// copyFixture copies a fixture folder so a test can damage it.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	src := fixtures.HF(t, name)
	dst := filepath.Join(t.TempDir(), name)
	err := filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// A conformance run that cannot fail proves nothing: starting from the wrong
// adapter must be reported, per check.
func TestConformanceDetectsMismatch(t *testing.T) {
	dir := copyFixture(t, "llama-gqa")
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors"} {
		data, err := os.ReadFile(filepath.Join(dir, "adapter_after_step2", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "adapter_init", f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := run(t, "conformance", dir)
	if code != 1 || !strings.Contains(out, "FAIL") || !strings.Contains(errOut, "over tolerance") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
}

func TestConformanceReportsBadInput(t *testing.T) {
	dir := copyFixture(t, "qwen2-bias")
	weights := filepath.Join(dir, "model", "model.safetensors")
	data, err := os.ReadFile(weights)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(weights, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "conformance", dir)
	if code != 1 || !strings.Contains(errOut, weights) {
		t.Errorf("truncated checkpoint: exit %d, stderr %q (want the file named)", code, errOut)
	}
	code, _, errOut = run(t, "conformance", filepath.Join(dir, "missing"))
	if code != 1 || !strings.Contains(errOut, "reference.json") {
		t.Errorf("missing directory: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run(t, "inspect", filepath.Join(dir, "model"))
	if code != 1 || !strings.Contains(errOut, weights) {
		t.Errorf("inspect of a truncated checkpoint: exit %d, stderr %q", code, errOut)
	}
}

func TestInspect(t *testing.T) {
	code, out, errOut := run(t, "inspect", "--batch", "2", "--seq", "24", "--rank", "8", filepath.Join(fixtures.HF(t, "llama-gqa"), "model"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// 512*64*2 (embeddings, head) + 3 layers * (64*64*2 + 64*32*2 + 176*64*3 + 2*64) + 64
	for _, want := range []string{"llama", "parameters:   204224 (204.2K)", "F32 (", "activations"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
}

// The SparseLoRA acceptance test: selections, scores, logits, loss and LoRA
// gradients of one sparse step match the reference on both fixtures.
func TestSparseConformanceOnFixtures(t *testing.T) {
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		code, out, errOut := run(t, "conformance", "--sparse", fixtures.HF(t, name))
		if code != 0 || !strings.Contains(out, "checks pass") || !strings.Contains(out, "select.layers.") {
			t.Errorf("%s: exit %d\n%s%s", name, code, out, errOut)
		}
	}
}

// With a different sparsity than the reference used, the selections must be
// reported as different.
func TestSparseConformanceDetectsMismatch(t *testing.T) {
	dir := copyFixture(t, "llama-gqa")
	path := filepath.Join(dir, "sparse_reference.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(raw), `"layers.2.mlp": 0.75`, `"layers.2.mlp": 0.8`, 1)
	if edited == string(raw) {
		t.Fatal("fixture layout changed: layers.2.mlp not found")
	}
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "conformance", "--sparse", dir)
	if code != 1 || !strings.Contains(out, "select.layers.2.mlp") || !strings.Contains(out, "FAIL") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
}

func TestBenchStepSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "step.json")
	code, out, errOut := run(t, "bench", "step", "--shape", filepath.Join(fixtures.HF(t, "llama-gqa"), "model", "config.json"),
		"--layers", "2", "--batch", "2", "--seq", "16", "--output-tokens", "4", "--first-layer", "14", "--rank", "4", "--reps", "1", "--json", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"dense LoRA", "SparseLoRA", "FLOPs sparse/dense"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
}
