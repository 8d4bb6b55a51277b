package app

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/train"
)

// A real `bench gemm` report of lavapipe (testdata/bench/gemm-lavapipe.json,
// made by `sparselora bench gemm --shapes 64x64x64,96x80x72 --gather
// m=0.75,n=0.25 --reps 3`) and a copy edited to look like another adapter that
// runs every GEMM four times faster, plus a `bench step` report.
func writeBenchReports(t *testing.T) (lavapipe, fast, step string, lavapipeMS []float64) {
	t.Helper()
	dir := t.TempDir()
	lavapipe = filepath.Join("testdata", "bench", "gemm-lavapipe.json")
	raw, err := os.ReadFile(lavapipe)
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	adapter := rep["adapter"].(map[string]any)
	adapter["device"], adapter["driver"], adapter["vendor"], adapter["type"] = "NVIDIA H200", "NVIDIA 570.86.15", "nvidia", "discrete GPU"
	for _, r := range rep["results"].([]any) {
		res := r.(map[string]any)
		lavapipeMS = append(lavapipeMS, res["median_ms"].(float64))
		res["median_ms"] = res["median_ms"].(float64) / 4
		res["tflops"] = res["tflops"].(float64) * 4
	}
	fast = filepath.Join(dir, "gemm-h200.json")
	writeTestJSON(t, fast, rep)

	step = filepath.Join(dir, "step.json")
	writeTestJSON(t, step, map[string]any{
		"adapter": map[string]any{"device": "NVIDIA H200", "driver": "NVIDIA 570.86.15", "backend": "Vulkan"},
		"date":    "2026-12-01T00:00:00Z", "shape": "llama3-8b", "layers": 32, "table_layers": []int{0, 31},
		"sparsity": "llama3-8b-math10k", "batch": 8, "seq": 512, "output_tokens": 128, "lora_rank": 32,
		"lora_targets": "q,k,v,o", "weights": "bf16", "flops_ratio": 0.478,
		"results": []train.StepTiming{
			{Variant: "dense LoRA", Reps: 3, MedianMS: 900, TokensPerSec: 4551, FLOPs: 2.4e14, TFLOPS: 266.7},
			{Variant: "SparseLoRA", Reps: 3, MedianMS: 600, TokensPerSec: 6827, FLOPs: 1.15e14, TFLOPS: 191.3, Speedup: 1.5},
		},
	})
	return lavapipe, fast, step, lavapipeMS
}

func writeTestJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBenchReportMergesAdapters(t *testing.T) {
	lavapipe, fast, step, lavapipeMS := writeBenchReports(t)
	dir := t.TempDir()
	mdPath, pngPath := filepath.Join(dir, "report.md"), filepath.Join(dir, "report.png")
	code, out, errOut := run(t, "bench", "report", lavapipe, fast, step, "--out", mdPath, "--png", pngPath, "--width", "1000", "--height", "500")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	md, err := os.ReadFile(mdPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(md) != out {
		t.Errorf("--out differs from stdout:\n%s\nvs\n%s", md, out)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2+4+4+2 {
		t.Fatalf("want a header, a rule and 10 rows:\n%s", out)
	}
	for i, line := range lines {
		if strings.TrimRight(line, " ") != line || !strings.HasPrefix(line, "|") || !strings.HasSuffix(line, "|") {
			t.Errorf("line %d is not a clean table row: %q", i+1, line)
		}
	}
	if !strings.HasPrefix(lines[0], "| adapter | backend | driver | benchmark | shape | variant | ms | TFLOP/s | speed-up") {
		t.Errorf("header: %s", lines[0])
	}
	// Rows of the same work are adjacent, the first adapter's first, and the
	// second adapter's speed-up over it is 4x.
	for i := 0; i < 4; i++ {
		first, second := cells(lines[2+2*i]), cells(lines[3+2*i])
		if first[0] != "llvmpipe (LLVM 15.0.6, 256 bits)" || second[0] != "NVIDIA H200" {
			t.Errorf("rows %d, %d: adapters %q, %q", 3+2*i, 4+2*i, first[0], second[0])
		}
		if first[4] != second[4] || first[5] != second[5] || first[3] != "gemm" {
			t.Errorf("rows %d, %d do not time the same work: %v / %v", 3+2*i, 4+2*i, first, second)
		}
		if first[8] != "1.00x" || second[8] != "4.00x" {
			t.Errorf("speed-ups %q, %q, want 1.00x and 4.00x", first[8], second[8])
		}
		if ms, err := strconv.ParseFloat(first[6], 64); err != nil || math.Abs(ms-lavapipeMS[i]) > 1e-3*lavapipeMS[i] {
			t.Errorf("row %d: ms %q, the report has %g", 3+2*i, first[6], lavapipeMS[i])
		}
	}
	if c := cells(lines[2]); c[4] != "64x64x64 NT f32" || c[5] != "dense" || c[1] != "Vulkan" || !strings.Contains(c[2], "Mesa") {
		t.Errorf("first row: %v", c)
	}
	if c := cells(lines[4]); c[5] != "gathered 48x16x64" {
		t.Errorf("gathered row: %v", c)
	}
	dense, sparse := cells(lines[10]), cells(lines[11])
	if dense[3] != "step" || dense[5] != "dense LoRA" || sparse[5] != "SparseLoRA" || dense[6] != "900.0" || dense[7] != "267" ||
		!strings.Contains(dense[4], "llama3-8b, 32 layers, 8x512 tokens (128 scored), r=32 on q,k,v,o") {
		t.Errorf("step rows: %v / %v", dense, sparse)
	}
	// Different work: each step variant is its own first.
	if dense[8] != "1.00x" || sparse[8] != "1.00x" {
		t.Errorf("step speed-ups %q %q", dense[8], sparse[8])
	}

	raw, err := os.ReadFile(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 1000 || img.Bounds().Dy() != 500 {
		t.Errorf("chart %v, want 1000x500", img.Bounds())
	}
	// Some pixels of the plot area are neither white nor gray: the bars.
	colored := 0
	for y := 50; y < 450; y++ {
		for x := 100; x < 950; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if !(r == g && g == b) {
				colored++
			}
		}
	}
	if colored < 5000 {
		t.Errorf("only %d colored pixels in the chart", colored)
	}
}

// cells splits a markdown table row into its trimmed cells.
func cells(row string) []string {
	parts := strings.Split(strings.Trim(row, "|"), " | ")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

func TestBenchReportRejectsBadFiles(t *testing.T) {
	lavapipe, _, _, _ := writeBenchReports(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, c := range []struct {
		path, want string
	}{
		{write("broken.json", `{"adapter": {"device": "x"}, "results": [`), "not a benchmark report"},
		{write("devices.json", `{"adapters": [{"device": "x"}]}`), `no "adapter"`},
		{write("metrics.jsonl", "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":1}\n"), "more than one JSON value"},
		{write("empty.json", `{"adapter": {"device": "x"}, "results": []}`), `no "results"`},
		{write("nomedian.json", `{"adapter": {"device": "x"}, "results": [{"shape": "1x1x1", "layout": "NT", "variant": "dense", "tflops": 1}]}`), `results[0]: want a positive "median_ms"`},
		{write("nolayout.json", `{"adapter": {"device": "x"}, "results": [{"variant": "dense", "median_ms": 1, "tflops": 1}]}`), `results[0]: a bench gemm result needs "shape" and "layout"`},
		{write("stepnolayers.json", `{"adapter": {"device": "x"}, "shape": "llama3-8b", "results": [{"variant": "dense LoRA", "median_ms": 1, "tflops": 1}]}`), `"layers"`},
		{filepath.Join(dir, "missing.json"), "no such file"},
		{write("zero.json", " \n"), "the file is empty"},
	} {
		code, _, errOut := run(t, "bench", "report", lavapipe, c.path)
		if code != 1 || !strings.Contains(errOut, c.path+":") && !strings.Contains(errOut, c.path) || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want exit 1 naming the file and %q", filepath.Base(c.path), code, errOut, c.want)
		}
	}
	if code, _, _ := run(t, "bench", "report"); code != 2 {
		t.Errorf("no files: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "bench", "report", lavapipe, "--png", filepath.Join(dir, "no", "such", "dir.png")); code != 1 {
		t.Errorf("--png into a missing directory: exit %d, want 1", code)
	}
}
