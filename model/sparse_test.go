package model_test

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
)

// fixedSelector keeps the same channels on every batch (a stand-in for the
// predictor, so the sparse step is tested on its own).
type fixedSelector struct {
	attn map[int]model.AttentionChannels
	mlp  map[int]*gpu.IndexList
	// sparseScored runs scored tokens sparse too (skip_output_tokens: false).
	sparseScored bool
}

func (s fixedSelector) SparseScoredTokens() bool { return s.sparseScored }

func (s fixedSelector) Attention(_ *gpu.Recorder, layer int, _ *gpu.Tensor, _ *model.TokenSets) (model.AttentionChannels, error) {
	return s.attn[layer], nil
}

func (s fixedSelector) MLP(_ *gpu.Recorder, layer int, _ *gpu.Tensor, _ *model.TokenSets) (*gpu.IndexList, error) {
	return s.mlp[layer], nil
}

type sparseRig struct {
	m       *model.Model
	set     *lora.Set
	ws      *model.Workspace
	batch   model.Batch
	release []func()
}

func newSparseRig(t *testing.T) *sparseRig {
	t.Helper()
	dev := model.SharedTestDevice()
	dir := fixtures.HF(t, "llama-gqa")
	m, err := model.Load(dev, filepath.Join(dir, "model"), gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	const rows, seq = 2, 48
	set, err := lora.Load(m, filepath.Join(dir, "adapter_init"))
	if err != nil {
		t.Fatal(err)
	}
	set.Attach(m)
	ws, err := m.NewWorkspace(rows, seq)
	if err != nil {
		t.Fatal(err)
	}
	// Row 0: 36 prompt tokens then 12 answer tokens; row 1: 30 prompt tokens, 10
	// answer tokens, 8 padding: about 70 context and 20 scored tokens.
	rng := rand.New(rand.NewPCG(3, 4))
	b := model.Batch{Rows: rows, Seq: seq}
	for r := range rows {
		for p := range seq {
			real := r == 0 || p < 40
			b.InputIDs = append(b.InputIDs, int32(rng.IntN(m.Config.VocabSize)))
			b.Mask = append(b.Mask, map[bool]int32{true: 1}[real])
			label := int32(-100)
			if real && p >= 36-6*r {
				label = b.InputIDs[len(b.InputIDs)-1]
			}
			b.Labels = append(b.Labels, label)
		}
	}
	if err := ws.Load(m, b); err != nil {
		t.Fatal(err)
	}
	return &sparseRig{m: m, set: set, ws: ws, batch: b, release: []func(){ws.Release, set.Release, m.Release}}
}

func (r *sparseRig) Close() {
	for _, f := range r.release {
		f()
	}
}

func (r *sparseRig) list(t *testing.T, idx []uint32) *gpu.IndexList {
	t.Helper()
	l, err := r.m.Dev.NewIndexList(idx, len(idx), "kept channels")
	if err != nil {
		t.Fatal(err)
	}
	r.release = append([]func(){l.Buf.Release}, r.release...)
	return &l
}

// step runs forward and backward and returns the logits-free results: loss and
// every LoRA gradient, concatenated.
func (r *sparseRig) step(t *testing.T, sel model.ChannelSelector, log func(gpu.Dispatch)) (float64, []float32, *gpu.Recorder) {
	t.Helper()
	rec := r.m.Dev.NewRecorder()
	rec.Log = log
	if err := r.set.ZeroGrad(rec); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Forward(rec, r.ws, sel); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Backward(rec, r.ws); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	loss := gputest.Download(t, r.ws.Loss)[0]
	var grads []float32
	for _, p := range r.set.Params() {
		grads = append(grads, gputest.Download(t, p.Grad)...)
	}
	return float64(loss), grads, rec
}

func iota(n int) []uint32 {
	v := make([]uint32, n)
	for i := range v {
		v[i] = uint32(i)
	}
	return v
}

// Keeping every channel runs the sparse code path (row-gathered and
// channel-gathered GEMMs) yet must reproduce the dense step.
func TestSparsityZeroReproducesDense(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	c := r.m.Config
	denseLoss, denseGrads, rec := r.step(t, nil, nil)
	rec.Release()
	all := fixedSelector{attn: map[int]model.AttentionChannels{}, mlp: map[int]*gpu.IndexList{}}
	for layer := 1; layer < len(r.m.Layers); layer++ {
		q, kv := r.list(t, iota(c.NumAttentionHeads*c.HeadDim)), r.list(t, iota(c.NumKeyValueHeads*c.HeadDim))
		all.attn[layer] = model.AttentionChannels{Q: q, K: kv, V: kv, O: q}
		all.mlp[layer] = r.list(t, iota(c.IntermediateSize))
	}
	loss, grads, rec := r.step(t, all, nil)
	rec.Release()
	if e := math.Abs(loss-denseLoss) / denseLoss; e > 1e-6 {
		t.Errorf("loss %v vs dense %v (relative %g)", loss, denseLoss, e)
	}
	want := make([]float64, len(denseGrads))
	for i, g := range denseGrads {
		want[i] = float64(g)
	}
	if e := gputest.RelL2(grads, want); !(e < 1e-6) {
		t.Errorf("LoRA gradients differ from the dense step by %g", e)
	}
}

var tileOf = regexp.MustCompile(`BM=(\d+)u,BN=(\d+)u`)

// The sparse step must not do the dense work: every GEMM of the MLP of a sparse
// layer that runs over context tokens is launched on a grid sized for the kept
// channels and the context rows alone.
func TestSparseStepSkipsWork(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	c := r.m.Config
	keep := []uint32{3, 17, 40, 41, 99, 150, 175}
	sel := fixedSelector{mlp: map[int]*gpu.IndexList{2: r.list(t, keep)}}
	var dispatches []gpu.Dispatch
	_, _, rec := r.step(t, sel, func(d gpu.Dispatch) { dispatches = append(dispatches, d) })
	defer rec.Release()
	contextRows := r.ws.Tokens.ContextCount
	if contextRows == 0 || r.ws.Tokens.ScoredCount == 0 {
		t.Fatalf("the batch has %d context and %d scored tokens", contextRows, r.ws.Tokens.ScoredCount)
	}
	type grid struct{ x, y, bm, bn int }
	var grids []grid
	for _, d := range dispatches {
		if d.Indirect == nil {
			continue
		}
		raw, err := d.Indirect.Buffer.Read(context.Background(), d.Indirect.Offset, 12)
		if err != nil {
			t.Fatal(err)
		}
		m := tileOf.FindStringSubmatch(d.Kernel)
		if m == nil {
			t.Fatalf("indirect dispatch of %s", d.Kernel)
		}
		bm, _ := strconv.Atoi(m[1])
		bn, _ := strconv.Atoi(m[2])
		grids = append(grids, grid{int(binary.LittleEndian.Uint32(raw)), int(binary.LittleEndian.Uint32(raw[4:])), bm, bn})
	}
	ceil := func(a, b int) int { return (a + b - 1) / b }
	found := map[string]bool{}
	for _, g := range grids {
		if g.y == ceil(contextRows, g.bm) && g.x == ceil(len(keep), g.bn) {
			found["gate/up forward, or down backward, on kept channels"] = true
		}
		if g.y == ceil(contextRows, g.bm) && g.x == ceil(c.HiddenSize, g.bn) {
			found["down forward, or gate/up backward, on context rows"] = true
		}
		// Only scored rows of the sparse layer, or the real rows of the dense
		// layers (gathered: the batch has padding), may run over the whole
		// intermediate width.
		if g.x*g.bn >= c.IntermediateSize && g.y != ceil(r.ws.Tokens.ScoredCount, g.bm) && g.y != ceil(r.ws.Tokens.RealCount, g.bm) {
			t.Errorf("an indirect GEMM spans all %d intermediate channels on %d row tiles of %d (scored rows: %d, real: %d)",
				c.IntermediateSize, g.y, g.bm, r.ws.Tokens.ScoredCount, r.ws.Tokens.RealCount)
		}
	}
	if len(found) != 2 {
		t.Errorf("did not find both sparse MLP GEMM shapes among %d indirect grids: %v (context rows %d, kept %d)", len(grids), grids, contextRows, len(keep))
	}
}

// TestQKVBiasOnDroppedChannels gives q, k and v non-zero biases (the fixtures'
// are all zero) and checks SPEC 4.5: a dropped channel of a sparse token holds
// exactly bias + adapter output (what the same layer gives with its base
// weight zeroed), kept channels and dense tokens hold the dense values, and
// keeping every channel reproduces the dense step's loss and gradients. With
// SparseScoredTokens (skip_output_tokens: false) scored tokens drop the
// channels too.
func TestQKVBiasOnDroppedChannels(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	c := r.m.Config
	rng := rand.New(rand.NewPCG(11, 12))
	for _, l := range r.m.Layers {
		for _, p := range []model.Projection{model.ProjQ, model.ProjK, model.ProjV} {
			if l.Proj[p].Bias != nil {
				t.Fatalf("the llama-gqa fixture has a %s bias", p)
			}
			b := gputest.Upload(t, r.m.Dev, gpu.F32, gputest.RandFloats(rng, l.Proj[p].Out), l.Proj[p].Out)
			l.Proj[p].Bias = b
			r.release = append([]func(){b.Release}, r.release...)
		}
	}
	const layer = 1
	kvDim := c.NumKeyValueHeads * c.HeadDim
	values := func() []float32 { return gputest.Download(t, r.ws.LayerValues(layer)) }

	denseLoss, denseGrads, rec := r.step(t, nil, nil)
	rec.Release()
	denseV := values()

	all := fixedSelector{attn: map[int]model.AttentionChannels{}, mlp: map[int]*gpu.IndexList{}}
	for l := range r.m.Layers {
		q, kv := r.list(t, iota(c.NumAttentionHeads*c.HeadDim)), r.list(t, iota(kvDim))
		all.attn[l] = model.AttentionChannels{Q: q, K: kv, V: kv, O: q}
		all.mlp[l] = r.list(t, iota(c.IntermediateSize))
	}
	loss, grads, rec := r.step(t, all, nil)
	rec.Release()
	if e := math.Abs(loss-denseLoss) / denseLoss; e > 1e-6 {
		t.Errorf("every channel kept: loss %v vs dense %v (relative %g)", loss, denseLoss, e)
	}
	want := make([]float64, len(denseGrads))
	for i, g := range denseGrads {
		want[i] = float64(g)
	}
	if e := gputest.RelL2(grads, want); !(e < 1e-6) {
		t.Errorf("every channel kept: LoRA gradients differ from the dense step by %g", e)
	}

	// bias + adapter alone: the dense step with layer 1's v_proj weight zeroed.
	v := r.m.Layers[layer].Proj[model.ProjV]
	zero, err := r.m.Dev.NewTensor(v.W.DType, "zero v_proj weight", v.W.Shape...)
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Release()
	realW := v.W
	v.W = zero
	_, _, rec = r.step(t, nil, nil)
	rec.Release()
	v.W = realW
	biasAndAdapter := values()

	keptV := []uint32{1, 2, 5, 8, 13}
	for _, sparseScored := range []bool{false, true} {
		sel := fixedSelector{attn: map[int]model.AttentionChannels{layer: {V: r.list(t, keptV)}}, sparseScored: sparseScored}
		_, _, rec := r.step(t, sel, nil)
		rec.Release()
		got := values()
		roles := map[int]string{}
		for _, role := range []struct {
			name string
			list gpu.IndexList
		}{{"context", r.ws.Tokens.Context}, {"scored", r.ws.Tokens.Scored}} {
			for _, row := range downloadIndexList(t, role.list) {
				roles[int(row)] = role.name
			}
		}
		bad := 0
		for row, role := range roles {
			sparse := role == "context" || sparseScored
			for ch := range kvDim {
				i := row*kvDim + ch
				dropped := sparse && !slices.Contains(keptV, uint32(ch))
				switch {
				case dropped && got[i] != biasAndAdapter[i]:
					bad++
					if bad < 5 {
						t.Errorf("sparse scored %v: %s row %d, dropped channel %d holds %g, want bias + adapter %g", sparseScored, role, row, ch, got[i], biasAndAdapter[i])
					}
				case !dropped && math.Abs(float64(got[i]-denseV[i])) > 1e-5*(1+math.Abs(float64(denseV[i]))):
					bad++
					if bad < 5 {
						t.Errorf("sparse scored %v: %s row %d, channel %d holds %g, dense %g", sparseScored, role, row, ch, got[i], denseV[i])
					}
				}
			}
		}
		if bad > 0 {
			t.Errorf("sparse scored %v: %d wrong values", sparseScored, bad)
		}
	}
}

// downloadIndexList reads a GPU index list's entries.
func downloadIndexList(t *testing.T, l gpu.IndexList) []uint32 {
	t.Helper()
	head, err := l.Buf.Read(context.Background(), uint64(4*l.Offset), 4)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint32(head)
	if n == 0 {
		return nil
	}
	raw, err := l.Buf.Read(context.Background(), uint64(4*(l.Offset+1)), uint64(4*n))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	return out
}

// Padding costs no frozen-projection or LM head work: on a batch with padding,
// every GEMM of a dense step over all Rows*Seq positions without a row list is
// an adapter's (its other size is the LoRA rank), and the frozen projections
// and the LM head run on row lists of the real and the scored tokens.
func TestPaddingCostsNoGEMMWork(t *testing.T) {
	r := newSparseRig(t)
	defer r.Close()
	T := r.ws.Rows * r.ws.Seq
	if r.ws.Tokens.RealCount == T {
		t.Fatal("the rig's batch has no padding")
	}
	rank := 0
	for _, l := range r.m.Layers {
		for _, a := range l.Adapters {
			if a != nil {
				rank = a.Rank()
			}
		}
	}
	var gemms []*gpu.GemmWork
	_, _, rec := r.step(t, nil, func(d gpu.Dispatch) {
		if d.Gemm != nil {
			gemms = append(gemms, d.Gemm)
		}
	})
	defer rec.Release()
	lists := map[string]gpu.IndexList{"real": r.ws.Tokens.Real, "scored": r.ws.Tokens.Scored}
	used := map[string]int{}
	for _, g := range gemms {
		switch {
		case g.Rows == nil && g.M == T && g.N != rank && g.K != rank:
			t.Errorf("a %d x %d x %d GEMM runs over every position, padding included", g.M, g.N, g.K)
		case g.Rows != nil:
			for name, l := range lists {
				if *g.Rows == l {
					used[name]++
				}
			}
		}
	}
	// Forward and backward of 7 projections in each of the layers on the real
	// tokens; logits, recomputed logits and dh on the scored ones.
	if want := 2 * 7 * len(r.m.Layers); used["real"] < want {
		t.Errorf("%d GEMMs on the real-token list, want at least %d", used["real"], want)
	}
	if used["scored"] < 3 {
		t.Errorf("%d GEMMs on the scored-token list, want at least 3", used["scored"])
	}
}
