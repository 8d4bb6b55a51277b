package app

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/plotrun holds a short synthetic run: 40 steps, a dense warm-up of
// 8, 8 layers, evaluation every 10 steps (one eval-only line) and a config.
func TestPlotCommandWritesChartsAndSummary(t *testing.T) {
	runDir := filepath.Join("testdata", "plotrun")
	out := t.TempDir()
	code, stdout, errOut := run(t, "plot", runDir, "--out", out, "--log-loss")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	sizes := map[string][2]int{"loss.png": {900, 500}, "lr.png": {900, 500}, "throughput.png": {900, 700},
		"flops.png": {900, 500}, "sparsity.png": {900, 800}}
	for name, size := range sizes {
		path := filepath.Join(out, name)
		if !strings.Contains(stdout, "wrote "+path) {
			t.Errorf("stdout does not report %s:\n%s", path, stdout)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if img.Bounds().Dx() != size[0] || img.Bounds().Dy() != size[1] {
			t.Errorf("%s: %v, want %dx%d", name, img.Bounds(), size[0], size[1])
		}
		// The plot area (10 % margins cut) is not just background and grid.
		ink := 0
		b := img.Bounds()
		for y := b.Dy() / 10; y < b.Dy()*9/10; y++ {
			for x := b.Dx() / 10; x < b.Dx()*9/10; x++ {
				r, g, bl, _ := img.At(x, y).RGBA()
				if !(r == g && g == bl && r>>8 >= 0x70) {
					ink++
				}
			}
		}
		if ink < size[0]*size[1]/1000 {
			t.Errorf("%s: only %d ink pixels in the plot area", name, ink)
		}
	}

	// The summary's figures, computed here from the metrics file directly.
	f, err := os.Open(filepath.Join(runDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var finalStep int
	var finalLoss, minLoss, sumTPS, bestEval = math.NaN(), math.Inf(1), 0.0, math.Inf(1)
	var steps, minStep int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		step := int(m["step"].(float64))
		finalStep = max(finalStep, step)
		if loss, ok := m["loss"].(float64); ok {
			steps++
			finalLoss = loss
			if loss < minLoss {
				minLoss, minStep = loss, step
			}
			sumTPS += m["tokens_per_s"].(float64)
		}
		if e, ok := m["eval_loss"].(float64); ok && e < bestEval {
			bestEval = e
		}
	}
	raw, err := os.ReadFile(filepath.Join(out, "summary.md"))
	if err != nil {
		t.Fatal(err)
	}
	summary := string(raw)
	for _, want := range []string{
		fmt.Sprintf("| final step | %d (epoch 2.00) |", finalStep),
		fmt.Sprintf("| final train loss | %.4f |", finalLoss),
		fmt.Sprintf("| min train loss | %.4f (step %d) |", minLoss, minStep),
		fmt.Sprintf("| best eval loss | %.4f", bestEval),
		fmt.Sprintf("| mean tokens/s | %.1f |", sumTPS/float64(steps)),
		"| logged steps by kind | 8 dense, 32 sparse (sparse from step 9) |",
		"![sparsity](sparsity.png)",
		"sparsity: llama3-8b-math10k", // from train_config.yaml
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
	for i, line := range strings.Split(summary, "\n") {
		if strings.TrimRight(line, " \t") != line {
			t.Errorf("summary.md line %d has trailing spaces: %q", i+1, line)
		}
	}
}

func TestPlotCommandErrors(t *testing.T) {
	if code, _, errOut := run(t, "plot"); code != 2 || !strings.Contains(errOut, "RUN_DIR") {
		t.Errorf("no run directory: exit %d, stderr %q", code, errOut)
	}
	empty := t.TempDir()
	if code, _, errOut := run(t, "plot", empty); code != 1 || !strings.Contains(errOut, filepath.Join(empty, "metrics.jsonl")) {
		t.Errorf("no metrics.jsonl: exit %d, stderr %q", code, errOut)
	}
	bad := t.TempDir()
	metrics := filepath.Join(bad, "metrics.jsonl")
	if err := os.WriteFile(metrics, []byte("{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":oops}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := run(t, "plot", bad); code != 1 || !strings.Contains(errOut, metrics+":2:") {
		t.Errorf("bad line 2: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := run(t, "plot", "--help"); code != 0 {
		t.Errorf("--help: exit %d", code)
	}
}
