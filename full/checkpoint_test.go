package full

import (
	"slices"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
)

// TestGradCheckpointEqualsSavedActivations: full-parameter gradients (every
// weight, norms and head included) are bit-identical whether backward reads
// saved activations or recomputes each layer's forward (checkpointing).
func TestGradCheckpointEqualsSavedActivations(t *testing.T) {
	cfg := tinyConfig(t, "qwen2", false) // biases too
	m, err := model.NewRandom(testDevice, cfg, gpu.F32, 32, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if err := InitRandom(m, 0.3, 5); err != nil {
		t.Fatal(err)
	}
	set, err := New(m)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Release()
	b := batch(cfg.VocabSize)
	grads := func(opts model.WorkspaceOptions) [][]float32 {
		ws, err := m.NewWorkspaceWith(b.Rows, b.Seq, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Release()
		if err := ws.Load(m, b); err != nil {
			t.Fatal(err)
		}
		rec := testDevice.NewRecorder()
		defer rec.Release()
		if err := set.ZeroGrad(rec); err != nil {
			t.Fatal(err)
		}
		if err := m.Forward(rec, ws, nil); err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(rec, ws); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		var out [][]float32
		for _, p := range set.Params() {
			out = append(out, gputest.Download(t, p.Grad))
		}
		return out
	}
	saved, ckpt := grads(model.WorkspaceOptions{}), grads(model.WorkspaceOptions{GradCheckpoint: true})
	nonZero := 0
	for i, p := range set.Params() {
		if !slices.Equal(ckpt[i], saved[i]) {
			t.Errorf("%s: gradient differs with checkpointing", p.Name)
		}
		if slices.ContainsFunc(saved[i], func(v float32) bool { return v != 0 }) {
			nonZero++
		}
	}
	if nonZero < len(saved)/2 {
		t.Errorf("only %d of %d gradients are non-zero", nonZero, len(saved))
	}
}
