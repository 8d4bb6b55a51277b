package model

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// attentionProblem is a random attention instance in float64 for the reference
// and as f32 for the GPU (the reference uses the f32-rounded values, so both see
// the same inputs).
type attentionProblem struct {
	shape      AttentionShape
	q, k, v    []float64
	dOut       []float64
	real       []bool // per token row: its attention_mask
	scale      float64
	qRow, kRow int // row lengths of q and k
}

// newAttentionProblem draws standard-normal q, k, v and dOut; lengths[b] is the
// number of real tokens of sequence b (right padding).
func newAttentionProblem(rng *rand.Rand, s AttentionShape, lengths []int) *attentionProblem {
	T := s.Tokens()
	p := &attentionProblem{shape: s, qRow: s.Heads * s.HeadDim, kRow: s.KVHeads * s.HeadDim,
		scale: 1 / math.Sqrt(float64(s.HeadDim)), real: make([]bool, T)}
	draw := func(n int) []float64 {
		x := make([]float64, n)
		for i := range x {
			x[i] = float64(float32(rng.NormFloat64()))
		}
		return x
	}
	p.q, p.k, p.v, p.dOut = draw(T*p.qRow), draw(T*p.kRow), draw(T*p.kRow), draw(T*p.qRow)
	for b, n := range lengths {
		for i := range n {
			p.real[b*s.Seq+i] = true
		}
	}
	return p
}

// attentionReference holds float64 results; rows of padding tokens are zero.
type attentionReference struct {
	out, lse, dq, dk, dv []float64
}

// visibleKeys lists the token rows that query row t attends: earlier or equal
// positions of its sequence that are real.
func (p *attentionProblem) visibleKeys(t int) []int {
	var keys []int
	for u := t - t%p.shape.Seq; u <= t; u++ {
		if p.real[u] {
			keys = append(keys, u)
		}
	}
	return keys
}

func (p *attentionProblem) dot(a []float64, aAt int, b []float64, bAt int) float64 {
	var sum float64
	for e := range p.shape.HeadDim {
		sum += a[aAt+e] * b[bAt+e]
	}
	return sum
}

// probabilities returns P(t, u) over keys for query row t, head h, and the
// logsumexp of the scaled scores: the plain O(S^2) softmax.
func (p *attentionProblem) probabilities(t, h int, keys []int) ([]float64, float64) {
	hd, g := p.shape.HeadDim, h/(p.shape.Heads/p.shape.KVHeads)
	scores := make([]float64, len(keys))
	top := math.Inf(-1)
	for j, u := range keys {
		scores[j] = p.scale * p.dot(p.q, t*p.qRow+h*hd, p.k, u*p.kRow+g*hd)
		top = math.Max(top, scores[j])
	}
	var sum float64
	for _, s := range scores {
		sum += math.Exp(s - top)
	}
	lse := top + math.Log(sum)
	for j := range scores {
		scores[j] = math.Exp(scores[j] - lse)
	}
	return scores, lse
}

// forward computes out and lse.
func (p *attentionProblem) forward() attentionReference {
	s := p.shape
	T, hd := s.Tokens(), s.HeadDim
	r := attentionReference{out: make([]float64, T*p.qRow), lse: make([]float64, T*s.Heads)}
	for t := range T {
		if !p.real[t] {
			continue
		}
		keys := p.visibleKeys(t)
		for h := range s.Heads {
			g := h / (s.Heads / s.KVHeads)
			probs, lse := p.probabilities(t, h, keys)
			r.lse[t*s.Heads+h] = lse
			for j, u := range keys {
				for e := range hd {
					r.out[t*p.qRow+h*hd+e] += probs[j] * p.v[u*p.kRow+g*hd+e]
				}
			}
		}
	}
	return r
}

// backward adds the analytic gradients of sum(out * dOut) over real rows.
func (p *attentionProblem) backward(r *attentionReference) {
	s := p.shape
	T, hd := s.Tokens(), s.HeadDim
	r.dq, r.dk, r.dv = make([]float64, T*p.qRow), make([]float64, T*p.kRow), make([]float64, T*p.kRow)
	for t := range T {
		if !p.real[t] {
			continue
		}
		keys := p.visibleKeys(t)
		for h := range s.Heads {
			g := h / (s.Heads / s.KVHeads)
			qAt, kvCol := t*p.qRow+h*hd, g*hd
			probs, _ := p.probabilities(t, h, keys)
			d := p.dot(p.dOut, qAt, r.out, qAt)
			for j, u := range keys {
				dp := p.dot(p.dOut, qAt, p.v, u*p.kRow+kvCol)
				ds := probs[j] * (dp - d)
				for e := range hd {
					r.dq[qAt+e] += p.scale * ds * p.k[u*p.kRow+kvCol+e]
					r.dk[u*p.kRow+kvCol+e] += p.scale * ds * p.q[qAt+e]
					r.dv[u*p.kRow+kvCol+e] += probs[j] * p.dOut[qAt+e]
				}
			}
		}
	}
}

// loss is sum(out * dOut) over real rows, whose gradients backward computes.
func (p *attentionProblem) loss() float64 {
	out := p.forward().out
	var sum float64
	for i, o := range out {
		sum += o * p.dOut[i]
	}
	return sum
}

// TestAttentionReferenceGradient proves the reference's analytic gradients
// against central differences of its forward, so the GPU tests compare with
// something right.
func TestAttentionReferenceGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	p := newAttentionProblem(rng, AttentionShape{Batch: 2, Seq: 5, Heads: 4, KVHeads: 2, HeadDim: 3}, []int{5, 3})
	r := p.forward()
	p.backward(&r)
	const eps = 1e-6
	for _, c := range []struct {
		name string
		x    []float64
		grad []float64
	}{{"q", p.q, r.dq}, {"k", p.k, r.dk}, {"v", p.v, r.dv}} {
		for i := range c.x {
			saved := c.x[i]
			c.x[i] = saved + eps
			plus := p.loss()
			c.x[i] = saved - eps
			minus := p.loss()
			c.x[i] = saved
			numeric := (plus - minus) / (2 * eps)
			if math.Abs(numeric-c.grad[i]) > 1e-7*(1+math.Abs(numeric)) {
				t.Errorf("d%s[%d]: analytic %.10g, central difference %.10g", c.name, i, c.grad[i], numeric)
			}
		}
	}
}

// attentionTensors are a problem's GPU operands.
type attentionTensors struct {
	q, k, v, mask, dOut           *gpu.Tensor
	out, lse, dq, dk, dv, scratch *gpu.Tensor
}

// uploadAttentionProblem uploads the inputs, with the mask as f32 0/1 or, with
// u32Mask, as u32 0/1 words (how the decoder stores it), and NaN-filled outputs.
func uploadAttentionProblem(t testing.TB, p *attentionProblem, u32Mask bool) *attentionTensors {
	t.Helper()
	s := p.shape
	T := s.Tokens()
	f32 := func(x []float64) []float32 {
		y := make([]float32, len(x))
		for i, v := range x {
			y[i] = float32(v)
		}
		return y
	}
	mask := make([]int32, T)
	for i, real := range p.real {
		if real {
			mask[i] = 1
		}
	}
	maskT, err := testDevice.NewTensor(gpu.F32, "mask", T)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(maskT.Release)
	if u32Mask {
		words := make([]uint32, T)
		for i, m := range mask {
			words[i] = uint32(m)
		}
		err = maskT.Buf.Write(maskT.Offset, gpu.U32Bytes(words))
	} else {
		err = WriteAttentionMask(maskT, mask)
	}
	if err != nil {
		t.Fatal(err)
	}
	ts := &attentionTensors{
		q:       gputest.Upload(t, testDevice, gpu.F32, f32(p.q), T, p.qRow),
		k:       gputest.Upload(t, testDevice, gpu.F32, f32(p.k), T, p.kRow),
		v:       gputest.Upload(t, testDevice, gpu.F32, f32(p.v), T, p.kRow),
		mask:    maskT,
		dOut:    gputest.Upload(t, testDevice, gpu.F32, f32(p.dOut), T, p.qRow),
		out:     gputest.Poisoned(t, testDevice, T, p.qRow),
		lse:     gputest.Poisoned(t, testDevice, T, s.Heads),
		dq:      gputest.Poisoned(t, testDevice, T, p.qRow),
		dk:      gputest.Poisoned(t, testDevice, T, p.kRow),
		dv:      gputest.Poisoned(t, testDevice, T, p.kRow),
		scratch: gputest.Poisoned(t, testDevice, T, s.Heads),
	}
	for _, x := range []*gpu.Tensor{ts.q, ts.k, ts.v, ts.dOut, ts.out, ts.lse, ts.dq, ts.dk, ts.dv, ts.scratch} {
		t.Cleanup(x.Release)
	}
	return ts
}

// compareRows checks rows [T, width] of got against want: rows where keep is
// true within tol relative L2, the others finite and zero.
func compareRows(t *testing.T, name string, got []float32, want []float64, width int, keep []bool, tol float64) {
	t.Helper()
	var g []float32
	var w []float64
	for row, k := range keep {
		for i := row * width; i < (row+1)*width; i++ {
			if k {
				g, w = append(g, got[i]), append(w, want[i])
			} else if got[i] != 0 {
				t.Errorf("%s: padding row %d holds %g at column %d, want 0", name, row, got[i], i-row*width)
				return
			}
		}
	}
	for i, x := range g {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Errorf("%s: element %d of the compared rows is %g", name, i, x)
			return
		}
	}
	if err := gputest.RelL2(g, w); err > tol {
		t.Errorf("%s: relative L2 error %.3g, want < %g", name, err, tol)
	}
}

func TestAttention(t *testing.T) {
	tiny := func(own, tile int) attentionTiling {
		return func(attentionPass) attentionTiles { return attentionTiles{own, tile} }
	}
	// The 16 KiB portable minimum, with the tiles each pass would get there.
	portable := testDevice.Limits
	portable.MaxComputeWorkgroupStorageSize = 16 << 10
	portableTiling := func(pass attentionPass) attentionTiles {
		tiles, err := pickAttentionTiles(pass, 128, portable, testDevice.Info.Type == gpu.AdapterTypeCPU)
		if err != nil {
			t.Fatal(err)
		}
		return tiles
	}
	// The tiles GPUs get, which the device's choice (on lavapipe, the CPU
	// tiles) does not cover.
	gpuTiling := func(pass attentionPass) attentionTiles {
		tiles, err := pickAttentionTiles(pass, 16, testDevice.Limits, false)
		if err != nil {
			t.Fatal(err)
		}
		return tiles
	}
	cases := []struct {
		name    string
		shape   AttentionShape
		lengths []int
		tiling  attentionTiling // nil: the device's choice
		u32Mask bool
	}{
		{"gqa padded", AttentionShape{Batch: 2, Seq: 7, Heads: 4, KVHeads: 2, HeadDim: 16}, []int{7, 4}, nil, false},
		{"gqa padded u32 mask", AttentionShape{Batch: 2, Seq: 7, Heads: 4, KVHeads: 2, HeadDim: 16}, []int{6, 2}, nil, true},
		{"mqa 33 positions", AttentionShape{Batch: 1, Seq: 33, Heads: 3, KVHeads: 1, HeadDim: 8}, []int{33}, nil, false},
		{"mqa 33 positions odd tiles", AttentionShape{Batch: 1, Seq: 33, Heads: 3, KVHeads: 1, HeadDim: 8}, []int{30}, tiny(5, 7), false},
		// 7 invocations over 12 head dims: two per invocation, the last clamped;
		// 3 owned rows in 7 invocations: two per row in the softmax step, one idle.
		{"gqa head dim past the tile", AttentionShape{Batch: 2, Seq: 11, Heads: 4, KVHeads: 2, HeadDim: 12}, []int{11, 8}, tiny(3, 7), false},
		{"one owned row", AttentionShape{Batch: 1, Seq: 9, Heads: 2, KVHeads: 1, HeadDim: 8}, []int{9}, tiny(1, 4), false},
		{"owned rows fill the tile", AttentionShape{Batch: 1, Seq: 19, Heads: 2, KVHeads: 2, HeadDim: 16}, []int{17}, tiny(8, 8), false},
		{"mha head dim 12 empty sequence", AttentionShape{Batch: 3, Seq: 5, Heads: 2, KVHeads: 2, HeadDim: 12}, []int{5, 3, 0}, nil, false},
		{"mha small tiles", AttentionShape{Batch: 2, Seq: 20, Heads: 2, KVHeads: 2, HeadDim: 32}, []int{13, 20}, tiny(4, 8), false},
		{"gqa gpu tiles", AttentionShape{Batch: 2, Seq: 70, Heads: 4, KVHeads: 2, HeadDim: 16}, []int{70, 66}, gpuTiling, false},
		{"gqa head dim 128 in 16 KiB", AttentionShape{Batch: 1, Seq: 6, Heads: 2, KVHeads: 1, HeadDim: 128}, []int{5}, portableTiling, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			p := newAttentionProblem(rng, c.shape, c.lengths)
			want := p.forward()
			p.backward(&want)
			ts := uploadAttentionProblem(t, p, c.u32Mask)

			rec := testDevice.NewRecorder()
			defer rec.Release()
			if err := attentionForward(rec, c.shape, ts.q, ts.k, ts.v, ts.mask, ts.out, ts.lse, c.tiling); err != nil {
				t.Fatal(err)
			}
			err := attentionBackward(rec, c.shape, ts.q, ts.k, ts.v, ts.mask, ts.out, ts.lse, ts.dOut,
				ts.dq, ts.dk, ts.dv, ts.scratch, c.tiling)
			if err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)

			compareRows(t, "out", gputest.Download(t, ts.out), want.out, p.qRow, p.real, 1e-5)
			compareRows(t, "lse", gputest.Download(t, ts.lse), want.lse, c.shape.Heads, p.real, 1e-5)
			compareRows(t, "dq", gputest.Download(t, ts.dq), want.dq, p.qRow, p.real, 1e-4)
			compareRows(t, "dk", gputest.Download(t, ts.dk), want.dk, p.kRow, p.real, 1e-4)
			compareRows(t, "dv", gputest.Download(t, ts.dv), want.dv, p.kRow, p.real, 1e-4)
		})
	}
}

// TestAttentionTilesFitPortableLimits checks that every pass finds tiles within
// WebGPU's default limits for head dims up to 256.
func TestAttentionTilesFitPortableLimits(t *testing.T) {
	portable := gpu.Limits{MaxComputeWorkgroupStorageSize: 16 << 10, MaxComputeInvocationsPerWorkgroup: 256, MaxComputeWorkgroupSizeX: 256}
	for _, cpu := range []bool{false, true} {
		for _, hd := range []int{8, 64, 128, 256} {
			for _, pass := range []attentionPass{attentionForwardPass, attentionQueryGradPass, attentionKeyValueGradPass} {
				tiles, err := pickAttentionTiles(pass, hd, portable, cpu)
				if err != nil {
					t.Errorf("cpu %t, head dim %d: %v", cpu, hd, err)
					continue
				}
				if hd == 128 && tiles.Own*tiles.Tile < 32 {
					t.Errorf("cpu %t: %s at head dim 128 gets tiles %s: too small to be efficient", cpu, pass, tiles)
				}
			}
		}
	}
}

func TestAttentionRejectsInvalidArguments(t *testing.T) {
	s := AttentionShape{Batch: 2, Seq: 3, Heads: 4, KVHeads: 2, HeadDim: 8}
	T := s.Tokens()
	newT := func(dtype gpu.DType, shape ...int) *gpu.Tensor {
		x, err := testDevice.NewTensor(dtype, "operand", shape...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(x.Release)
		return x
	}
	valid := func() *attentionTensors {
		return &attentionTensors{
			q: newT(gpu.F32, T, 32), k: newT(gpu.F32, T, 16), v: newT(gpu.F32, T, 16), mask: newT(gpu.F32, T),
			dOut: newT(gpu.F32, T, 32), out: newT(gpu.F32, T, 32), lse: newT(gpu.F32, T, 4),
			dq: newT(gpu.F32, T, 32), dk: newT(gpu.F32, T, 16), dv: newT(gpu.F32, T, 16), scratch: newT(gpu.F32, T, 4),
		}
	}
	shared, sharedGrads := newT(gpu.F32, 2*T*32), newT(gpu.F32, 2*T*32)
	cases := []struct {
		name   string
		shape  AttentionShape
		modify func(*attentionTensors)
		want   string // a fragment of the error
	}{
		{"kv heads do not divide heads", AttentionShape{Batch: 2, Seq: 3, Heads: 4, KVHeads: 3, HeadDim: 8}, nil, "do not divide"},
		{"zero head dim", AttentionShape{Batch: 2, Seq: 3, Heads: 4, KVHeads: 2}, nil, "positive"},
		{"negative batch", AttentionShape{Batch: -1, Seq: 3, Heads: 4, KVHeads: 2, HeadDim: 8}, nil, "positive"},
		{"q too small", s, func(a *attentionTensors) { a.q = newT(gpu.F32, T, 31) }, "q has shape"},
		{"k sized like q", s, func(a *attentionTensors) { a.k = newT(gpu.F32, T, 32) }, "k has shape"},
		{"mask per sequence", s, func(a *attentionTensors) { a.mask = newT(gpu.F32, 2) }, "mask has shape"},
		{"bf16 v", s, func(a *attentionTensors) { a.v = newT(gpu.BF16, T, 16) }, "v is bf16"},
		{"nil lse", s, func(a *attentionTensors) { a.lse = nil }, "lse is nil"},
		{"nil out", s, func(a *attentionTensors) { a.out = nil }, "out is nil"},
		{"out overlapping dOut", s, func(a *attentionTensors) {
			a.out = &gpu.Tensor{Buf: shared.Buf, Shape: []int{T, 32}}
			a.dOut = &gpu.Tensor{Buf: shared.Buf, Offset: 512, Shape: []int{T, 32}}
		}, "overlap"},
		{"output in an input's buffer", s, func(a *attentionTensors) {
			a.out = &gpu.Tensor{Buf: a.q.Buf, Shape: []int{T, 32}}
			a.dq = &gpu.Tensor{Buf: a.q.Buf, Shape: []int{T, 32}}
		}, "shares a buffer with input q"},
		{"overlapping outputs", s, func(a *attentionTensors) {
			a.out = &gpu.Tensor{Buf: shared.Buf, Shape: []int{T, 32}}
			a.lse = &gpu.Tensor{Buf: shared.Buf, Offset: 4, Shape: []int{T, 4}}
			a.dk = &gpu.Tensor{Buf: sharedGrads.Buf, Shape: []int{T, 16}}
			a.dv = &gpu.Tensor{Buf: sharedGrads.Buf, Offset: 8, Shape: []int{T, 16}}
		}, "overlap"},
		{"dq under dk", s, func(a *attentionTensors) {
			a.dq = &gpu.Tensor{Buf: sharedGrads.Buf, Shape: []int{T, 32}}
			a.dk = &gpu.Tensor{Buf: sharedGrads.Buf, Offset: 256, Shape: []int{T, 16}}
			a.dv = &gpu.Tensor{Buf: sharedGrads.Buf, Offset: 1024, Shape: []int{T, 16}}
		}, "overlaps dk or dv"},
		{"tensor past its buffer", s, func(a *attentionTensors) {
			a.q = &gpu.Tensor{Buf: a.q.Buf, Offset: 4, Shape: []int{T, 32}}
			a.dOut = &gpu.Tensor{Buf: a.dOut.Buf, Offset: 4, Shape: []int{T, 32}}
		}, "overruns"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := valid()
			if c.modify != nil {
				c.modify(a)
			}
			// Every case breaks something one of the calls uses; a call that
			// fails must have recorded nothing.
			var errs []error
			for _, call := range []func(*gpu.Recorder) error{
				func(rec *gpu.Recorder) error {
					return AttentionForward(rec, c.shape, a.q, a.k, a.v, a.mask, a.out, a.lse)
				},
				func(rec *gpu.Recorder) error {
					return AttentionBackward(rec, c.shape, a.q, a.k, a.v, a.mask, a.out, a.lse, a.dOut, a.dq, a.dk, a.dv, a.scratch)
				},
			} {
				rec := testDevice.NewRecorder()
				if err := call(rec); err != nil {
					errs = append(errs, err)
					if rec.Dispatches != 0 {
						t.Errorf("%d dispatches recorded by a call that failed with %q", rec.Dispatches, err)
					}
				}
				rec.Release()
			}
			if len(errs) == 0 {
				t.Fatalf("no error, want one mentioning %q", c.want)
			}
			for _, err := range errs {
				if !strings.Contains(err.Error(), c.want) {
					t.Errorf("error %q does not mention %q", err, c.want)
				}
			}
		})
	}

	t.Run("tiles beyond the device", func(t *testing.T) {
		a := valid()
		rec := testDevice.NewRecorder()
		defer rec.Release()
		huge := func(attentionPass) attentionTiles { return attentionTiles{64, 4096} }
		err := attentionForward(rec, s, a.q, a.k, a.v, a.mask, a.out, a.lse, huge)
		if err == nil || !strings.Contains(err.Error(), "invocations") {
			t.Errorf("got %v, want an error about invocations per workgroup", err)
		}
	})
	t.Run("nil recorder", func(t *testing.T) {
		a := valid()
		if err := AttentionForward(nil, s, a.q, a.k, a.v, a.mask, a.out, a.lse); err == nil {
			t.Error("no error for a nil recorder")
		}
	})
	t.Run("mask values", func(t *testing.T) {
		if err := WriteAttentionMask(newT(gpu.F32, 3), []int32{1, 2, 0}); err == nil {
			t.Error("no error for a mask value of 2")
		}
		if err := WriteAttentionMask(newT(gpu.F32, 4), []int32{1, 1, 0}); err == nil {
			t.Error("no error for a mask of the wrong length")
		}
	})
}

// BenchmarkAttention times the forward and both backward passes at the
// 4-layer bench configuration's shape (configs/bench/llama-4layer-1024.json:
// 16 query and 4 kv heads of 64 dims, 2 rows of 256 tokens) and reports
// GFLOP/s as the step's FLOP count charges attention: 18 * heads * head_dim
// FLOPs per causal pair (forward 4, dq pass 6 and dk/dv pass 8, with the
// recomputed scores).
func BenchmarkAttention(b *testing.B) {
	s := AttentionShape{Batch: 2, Seq: 256, Heads: 16, KVHeads: 4, HeadDim: 64}
	p := newAttentionProblem(rand.New(rand.NewPCG(1, 2)), s, []int{256, 256})
	ts := uploadAttentionProblem(b, p, true)
	pairs := s.Batch * s.Seq * (s.Seq + 1) / 2
	flops := 18 * float64(pairs) * float64(s.Heads*s.HeadDim)
	record := func() {
		rec := testDevice.NewRecorder()
		defer rec.Release()
		if err := AttentionForward(rec, s, ts.q, ts.k, ts.v, ts.mask, ts.out, ts.lse); err != nil {
			b.Fatal(err)
		}
		if err := AttentionBackward(rec, s, ts.q, ts.k, ts.v, ts.mask, ts.out, ts.lse, ts.dOut, ts.dq, ts.dk, ts.dv, ts.scratch); err != nil {
			b.Fatal(err)
		}
		gputest.Submit(b, rec)
		if err := testDevice.Sync(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	record() // pipelines compile here
	b.ResetTimer()
	for range b.N {
		record()
	}
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
