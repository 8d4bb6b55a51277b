package model_test

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
)

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}

// TestCheckpointSegmentsEqualSavedActivations runs a 7-layer stack of the
// fixture's layers (0, 1, 2, 0, 1, 2, 0: repeated layers share weights and
// adapters, which is all the test needs) with every activation kept, with
// checkpointing (backward recomputes each layer's forward) and with
// checkpoint segments of 2, 3, 4 and 7 layers, so that backward replays
// segments whose shared inputs later segments overwrote: the loss and every
// adapter gradient must be bit-identical, densely and with sparse layers
// whose channel lists the recomputation must reuse.
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
			if !ws.GradCheckpoint() || saved.GradCheckpoint() {
				t.Fatal("GradCheckpoint does not report the workspace's option")
			}
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

// TestForwardOnlyWorkspace: evaluation's workspace (one shared set of
// activations, two alternating layer inputs, no gradient buffers) gives the
// loss of a training workspace bit for bit on the 7-layer stack, holds the
// bytes PlanWorkspace counts, and refuses a backward pass.
func TestForwardOnlyWorkspace(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	own, ownWS := r.m.Layers, r.ws
	defer func() { r.m.Layers, r.ws = own, ownWS }()
	r.m.Layers = []*model.Layer{own[0], own[1], own[2], own[0], own[1], own[2], own[0]}
	dev := r.m.Dev
	loss := func(opts model.WorkspaceOptions) (float32, *model.Workspace, uint64) {
		before := dev.LiveBytes()
		ws, err := r.m.NewWorkspaceWith(ownWS.Rows, ownWS.Seq, opts)
		if err != nil {
			t.Fatal(err)
		}
		bytes := uint64(dev.LiveBytes() - before)
		if err := ws.Load(r.m, r.batch); err != nil {
			t.Fatal(err)
		}
		rec := dev.NewRecorder()
		defer rec.Release()
		if err := r.m.Forward(rec, ws, nil); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		return gputest.Download(t, ws.Loss)[0], ws, bytes
	}
	want, saved, savedBytes := loss(model.WorkspaceOptions{})
	saved.Release()
	got, ws, bytes := loss(model.WorkspaceOptions{ForwardOnly: true})
	defer ws.Release()
	if got != want {
		t.Errorf("forward-only loss %v, training workspace's %v", got, want)
	}
	c := *r.m.Config
	c.NumHiddenLayers = len(r.m.Layers)
	var ranks [7]int
	for p, ad := range own[0].Adapters {
		if ad != nil {
			ranks[p] = ad.Rank()
		}
	}
	plan := c.PlanWorkspace(ownWS.Rows, ownWS.Seq, ranks, model.WorkspaceOptions{ForwardOnly: true}, dev.Limits).Total()
	if d := float64(bytes)/float64(plan) - 1; math.Abs(d) > 0.02 {
		t.Errorf("forward-only workspace holds %d bytes, PlanWorkspace says %d (%+.1f %%)", bytes, plan, 100*d)
	}
	if bytes*2 > savedBytes {
		t.Errorf("forward-only workspace holds %d bytes, a training workspace %d: want less than half", bytes, savedBytes)
	}
	rec := dev.NewRecorder()
	defer rec.Release()
	if err := r.m.Backward(rec, ws); err == nil || !strings.Contains(err.Error(), "forward-only") {
		t.Errorf("Backward on a forward-only workspace: %v", err)
	}
}
