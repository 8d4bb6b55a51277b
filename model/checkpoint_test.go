package model_test

import (
	"slices"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
)

// TestGradCheckpointEqualsSavedActivations runs the fixture's LoRA step
// (forward, backward) with every layer's activations kept and with
// checkpointing (backward recomputes each layer's forward): the loss and every
// adapter gradient must be bit-identical, densely and with sparse layers whose
// channel lists the recomputation must reuse.
func TestGradCheckpointEqualsSavedActivations(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	saved := r.ws
	ckpt, err := r.m.NewWorkspaceWith(saved.Rows, saved.Seq, model.WorkspaceOptions{GradCheckpoint: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Release()
	if !ckpt.GradCheckpoint() || saved.GradCheckpoint() {
		t.Fatal("GradCheckpoint does not report the workspace's option")
	}
	if err := ckpt.Load(r.m, r.batch); err != nil {
		t.Fatal(err)
	}
	c := r.m.Config
	kv := c.NumKeyValueHeads * c.HeadDim
	// A selector whose lists differ per layer: attention on layer 0, the MLP
	// on layers 1 and 2, and nothing on the others.
	sparse := fixedSelector{
		attn: map[int]model.AttentionChannels{0: {
			Q: r.list(t, iota(c.NumAttentionHeads*c.HeadDim/2)),
			K: r.list(t, iota(kv/2)),
			V: r.list(t, []uint32{1, 2, 5, 7}),
			O: r.list(t, []uint32{0, 3, 4, 9, 11, 20}),
		}},
		mlp: map[int]*gpu.IndexList{1: r.list(t, []uint32{3, 17, 40, 41, 99}), 2: r.list(t, []uint32{0, 8, 9, 150, 175})},
	}
	for _, sel := range []struct {
		name string
		sel  model.ChannelSelector
	}{{"dense", nil}, {"sparse", sparse}} {
		r.ws = saved
		lossSaved, gradsSaved, rec := r.step(t, sel.sel, nil)
		rec.Release()
		r.ws = ckpt
		lossCkpt, gradsCkpt, rec := r.step(t, sel.sel, nil)
		rec.Release()
		if lossCkpt != lossSaved {
			t.Errorf("%s: loss %v with checkpointing, %v without", sel.name, lossCkpt, lossSaved)
		}
		if !slices.Equal(gradsCkpt, gradsSaved) {
			worst := 0.0
			for i := range gradsCkpt {
				worst = max(worst, float64(abs32(gradsCkpt[i]-gradsSaved[i])))
			}
			t.Errorf("%s: LoRA gradients differ with checkpointing (largest difference %g)", sel.name, worst)
		}
		if !slices.ContainsFunc(gradsSaved, func(v float32) bool { return v != 0 }) {
			t.Errorf("%s: every gradient is 0", sel.name)
		}
	}
	r.ws = saved
}

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}
