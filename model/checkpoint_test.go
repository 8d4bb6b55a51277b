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

// TestCheckpointSegmentsEqualSavedActivations runs a 7-layer stack of the
// fixture's layers (0, 1, 2, 0, 1, 2, 0: repeated layers share weights and
// adapters, which is all the test needs) with every activation kept and with
// checkpoint segments of 1, 2, 3, 4 and 7 layers, so that backward replays
// segments whose shared inputs later segments overwrote: the loss and every
// adapter gradient must be bit-identical, densely and sparse.
func TestCheckpointSegmentsEqualSavedActivations(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	own, ownWS := r.m.Layers, r.ws
	defer func() { r.m.Layers, r.ws = own, ownWS }()
	r.m.Layers = []*model.Layer{own[0], own[1], own[2], own[0], own[1], own[2], own[0]}
	workspace := func(opts model.WorkspaceOptions) *model.Workspace {
		ws, err := r.m.NewWorkspaceWith(ownWS.Rows, ownWS.Seq, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := ws.Load(r.m, r.batch); err != nil {
			t.Fatal(err)
		}
		return ws
	}
	c := r.m.Config
	sparse := fixedSelector{
		attn: map[int]model.AttentionChannels{3: {
			Q: r.list(t, iota(c.NumAttentionHeads*c.HeadDim/2)),
			K: r.list(t, iota(c.NumKeyValueHeads*c.HeadDim/2)),
			V: r.list(t, []uint32{1, 2, 5, 7}),
			O: r.list(t, []uint32{0, 3, 4, 9, 11, 20}),
		}},
		mlp: map[int]*gpu.IndexList{1: r.list(t, []uint32{3, 17, 40, 41, 99}), 5: r.list(t, []uint32{0, 8, 9, 150, 175})},
	}
	saved := workspace(model.WorkspaceOptions{})
	defer saved.Release()
	for _, sel := range []struct {
		name string
		sel  model.ChannelSelector
	}{{"dense", nil}, {"sparse", sparse}} {
		r.ws = saved
		lossSaved, gradsSaved, rec := r.step(t, sel.sel, nil)
		rec.Release()
		if !slices.ContainsFunc(gradsSaved, func(v float32) bool { return v != 0 }) {
			t.Errorf("%s: every gradient is 0", sel.name)
		}
		for _, every := range []int{1, 2, 3, 4, 7} {
			ws := workspace(model.WorkspaceOptions{GradCheckpoint: true, CheckpointEvery: every})
			r.ws = ws
			// Twice: the second step starts from the slots the first left.
			for run := range 2 {
				loss, grads, rec := r.step(t, sel.sel, nil)
				rec.Release()
				if loss != lossSaved {
					t.Errorf("%s, segments of %d, step %d: loss %v, %v without checkpointing", sel.name, every, run, loss, lossSaved)
				}
				if !slices.Equal(grads, gradsSaved) {
					worst := 0.0
					for i := range grads {
						worst = max(worst, float64(abs32(grads[i]-gradsSaved[i])))
					}
					t.Errorf("%s, segments of %d, step %d: LoRA gradients differ (largest difference %g)", sel.name, every, run, worst)
				}
			}
			ws.Release()
		}
	}
}

func TestCheckpointSegment(t *testing.T) {
	for _, c := range []struct{ layers, want int }{{1, 1}, {2, 1}, {3, 1}, {4, 2}, {16, 4}, {32, 4}, {80, 8}} {
		if got := model.CheckpointSegment(c.layers); got != c.want {
			t.Errorf("CheckpointSegment(%d) = %d, want %d", c.layers, got, c.want)
		}
	}
}
