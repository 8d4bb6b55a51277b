package app

import (
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model/safetensors"
)

// The llama-gqa fixture has max_position_embeddings 128 (its config.json).
func TestInspectBoundsTheEstimate(t *testing.T) {
	dir := filepath.Join(fixtures.HF(t, "llama-gqa"), "model")
	code, out, errOut := run(t, "inspect", dir)
	if code != 0 || !strings.Contains(out, "batch 4 x 128 tokens") {
		t.Errorf("default --seq 512 on a 128-position model: exit %d, want the estimate at 128 tokens\n%s%s", code, out, errOut)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--seq", "200"}, "max_position_embeddings 128"},
		{[]string{"--batch", "9223372036854775807"}, "--batch"},
		{[]string{"--batch", "3000000000", "--seq", "100"}, "--batch"},
		{[]string{"--rank", "99999999999999"}, "--rank"},
	} {
		code, out, errOut := run(t, append([]string{"inspect", dir}, c.args...)...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("inspect %v: exit %d, stderr %q, want exit 1 naming %q\n%s", c.args, code, errOut, c.want, out)
		}
	}
}

// inspect estimates what train would run: the same default targets.
func TestInspectTargetsDefaultIsTrains(t *testing.T) {
	defaultOf := func(help string) string {
		_, after, ok := strings.Cut(help, "-targets string")
		if !ok {
			return ""
		}
		_, after, _ = strings.Cut(after, `(default "`)
		value, _, _ := strings.Cut(after, `"`)
		return value
	}
	_, trainHelp, _ := run(t, "train", "--help")
	_, inspectHelp, _ := run(t, "inspect", "--help")
	if got, want := defaultOf(inspectHelp), defaultOf(trainHelp); got == "" || got != want {
		t.Errorf("inspect --targets default %q, train's %q", got, want)
	}
}

// TestInspectShowsSpectra checks that inspect prints the top singular values
// and that the built-in model, trained by sparselora, has low-rank structure
// the SVD estimator can use: its last layer's q_proj spectrum falls off.
func TestInspectShowsSpectra(t *testing.T) {
	code, out, errOut := run(t, "inspect", "--singular-values", "6", filepath.Join("..", "models", "tiny"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var first, sixth float64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 7 && f[0] == "model.layers.2.self_attn.q_proj.weight" {
			first, _ = strconv.ParseFloat(f[1], 64)
			sixth, _ = strconv.ParseFloat(f[6], 64)
		}
	}
	if !(sixth > 0 && first/sixth > 2) {
		t.Errorf("q_proj of the last layer: sigma_1 %g, sigma_6 %g; want a spectrum that falls off (ratio > 2)\n%s", first, sixth, out)
	}
}

// inspect reads every tensor and names those holding NaN or Inf (a dense
// run would only stop at its first logged step).
func TestInspectNamesNonFiniteTensors(t *testing.T) {
	dir := filepath.Join(fixtures.HF(t, "llama-gqa"), "model")
	code, out, errOut := run(t, "inspect", dir, "--singular-values", "0")
	if code != 0 || !strings.Contains(out, "values:       all finite (") {
		t.Fatalf("the fixture: exit %d\n%s%s", code, out, errOut)
	}
	poisoned := copyDir(t, dir)
	const name = "model.layers.1.mlp.up_proj.weight"
	path := filepath.Join(poisoned, "model.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	tensors := map[string]safetensors.Tensor{}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		raw, err := f.ReadRaw(n)
		if err != nil {
			t.Fatal(err)
		}
		tensors[n] = safetensors.Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: raw}
		if n == name {
			values, _ := f.ReadFloat32(n)
			values[5], values[9] = float32(math.NaN()), float32(math.Inf(1))
			tensors[n], _ = safetensors.NewFloatTensor(info.Dtype, info.Shape, values)
		}
	}
	f.Close()
	if err := safetensors.WriteFile(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run(t, "inspect", poisoned, "--singular-values", "0")
	if code == 0 || !strings.Contains(out, name+": 1 NaN, 1 Inf (first at element 5)") || !strings.Contains(errOut, name) {
		t.Errorf("a NaN and an Inf in %s: exit %d\n%s%s", name, code, out, errOut)
	}
}
