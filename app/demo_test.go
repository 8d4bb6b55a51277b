package app

import (
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
)

// TestDemoLeavesChartsAndTheStepSpeedup runs a short demo (2 steps each, the
// step benchmark on the small fixture's shape) and checks what it leaves:
// each run's charts and summary.md, the comparison chart, and the speed-up
// line of the closing benchmark in the output and in table.md.
func TestDemoLeavesChartsAndTheStepSpeedup(t *testing.T) {
	out := t.TempDir()
	shape := filepath.Join(fixtures.HF(t, "llama-gqa"), "model", "config.json")
	code, stdout, stderr := run(t, "demo", "--model", filepath.Join("..", "models", "tiny"), "--out", out,
		"--max-steps", "2", "--train-examples", "16", "--eval-examples", "2", "--bench-shape", shape)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, run := range []string{"dense-lora", "sparselora"} {
		for _, f := range []string{"summary.md", "loss.png", "throughput.png"} {
			if _, err := os.Stat(filepath.Join(out, run, f)); err != nil {
				t.Errorf("%s: %v", run, err)
			}
		}
	}
	f, err := os.Open(filepath.Join(out, "comparison.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := png.Decode(f); err != nil {
		t.Errorf("comparison.png: %v", err)
	} else if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 300 {
		t.Errorf("comparison.png is %v", b)
	}
	speedup := regexp.MustCompile(`dense LoRA \d+ ms, SparseLoRA \d+ ms: speed-up \d+\.\d\dx \(FLOPs sparse/dense 0\.\d{3}, bound \d+\.\d\dx\)`)
	if !speedup.MatchString(stdout) {
		t.Errorf("no speed-up line in the output:\n%s", stdout)
	}
	table, err := os.ReadFile(filepath.Join(out, "table.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !speedup.Match(table) || !strings.Contains(string(table), "comparison.png") {
		t.Errorf("table.md lacks the speed-up or the chart:\n%s", table)
	}
}
