package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// TestDecodeAttention compares DecodeAttention with the float64 reference of
// the full causal attention (rows Start.. of a sequence of Start+Rows real
// tokens) and with AttentionForward's rows on the GPU. Cache rows past the
// last query's position hold NaN, so reading them would show.
func TestDecodeAttention(t *testing.T) {
	cases := []struct {
		name  string
		shape DecodeAttentionShape
		spare int // cache rows past Start+Rows
	}{
		{"mqa 5/1 hd 12 first token", DecodeAttentionShape{Start: 0, Rows: 1, Heads: 5, KVHeads: 1, HeadDim: 12}, 3},
		{"mqa 5/1 hd 12 37 keys", DecodeAttentionShape{Start: 36, Rows: 1, Heads: 5, KVHeads: 1, HeadDim: 12}, 5},
		{"mqa 5/1 hd 12 300 keys", DecodeAttentionShape{Start: 299, Rows: 1, Heads: 5, KVHeads: 1, HeadDim: 12}, 1},
		{"gqa 4/2 hd 16 prefill chunk", DecodeAttentionShape{Start: 30, Rows: 7, Heads: 4, KVHeads: 2, HeadDim: 16}, 0},
		{"gqa 6/3 hd 128 whole prompt", DecodeAttentionShape{Start: 0, Rows: 130, Heads: 6, KVHeads: 3, HeadDim: 128}, 2},
		{"mha hd 160 two lanes per dim", DecodeAttentionShape{Start: 140, Rows: 2, Heads: 2, KVHeads: 2, HeadDim: 160}, 4},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.shape
			full := AttentionShape{Batch: 1, Seq: s.Keys(), Heads: s.Heads, KVHeads: s.KVHeads, HeadDim: s.HeadDim}
			rng := rand.New(rand.NewPCG(uint64(i), 77))
			p := newAttentionProblem(rng, full, []int{s.Keys()})
			want := p.forward()
			f32 := func(x []float64) []float32 {
				y := make([]float32, len(x))
				for i, v := range x {
					y[i] = float32(v)
				}
				return y
			}
			nanRows := func(x []float64, rows, width int) []float32 {
				y := f32(x)
				for range rows * width {
					y = append(y, float32(math.NaN()))
				}
				return y
			}
			qRows := p.q[s.Start*p.qRow:]
			q := gputest.Upload(t, testDevice, gpu.F32, f32(qRows), s.Rows, p.qRow)
			kCache := gputest.Upload(t, testDevice, gpu.F32, nanRows(p.k, c.spare, p.kRow), s.Keys()+c.spare, p.kRow)
			vCache := gputest.Upload(t, testDevice, gpu.F32, nanRows(p.v, c.spare, p.kRow), s.Keys()+c.spare, p.kRow)
			out := gputest.Poisoned(t, testDevice, s.Rows, p.qRow)
			// The full kernel over the same sequence, for comparison.
			ts := uploadAttentionProblem(t, p, false)
			for _, x := range []*gpu.Tensor{q, kCache, vCache, out} {
				t.Cleanup(x.Release)
			}
			rec := testDevice.NewRecorder()
			defer rec.Release()
			if err := DecodeAttention(rec, s, q, kCache, vCache, out); err != nil {
				t.Fatal(err)
			}
			if err := AttentionForward(rec, full, ts.q, ts.k, ts.v, ts.mask, ts.out, ts.lse); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			got := gputest.Download(t, out)
			keep := make([]bool, s.Rows)
			for r := range keep {
				keep[r] = true
			}
			compareRows(t, "out vs float64", got, want.out[s.Start*p.qRow:], p.qRow, keep, 1e-5)
			fullOut := gputest.Download(t, ts.out)[s.Start*p.qRow:]
			// Both kernels round differently (summation order), so they agree to
			// f32 accuracy rather than bit for bit.
			if err := gputest.RelL2(got, widen(fullOut)); err > 2e-6 || math.IsNaN(err) {
				t.Errorf("out differs from AttentionForward's rows %d.. by relative L2 %.3g", s.Start, err)
			}
		})
	}
}

// TestDecodeAttentionStability feeds scores far beyond exp's f32 range: the
// online softmax must keep them finite.
func TestDecodeAttentionStability(t *testing.T) {
	s := DecodeAttentionShape{Start: 200, Rows: 1, Heads: 1, KVHeads: 1, HeadDim: 4}
	q := gputest.Upload(t, testDevice, gpu.F32, []float32{100, 0, 0, 0}, 1, 4)
	keys := make([]float32, 4*s.Keys())
	values := make([]float32, 4*s.Keys())
	for u := range s.Keys() {
		keys[4*u] = float32(u % 7) // scores 0, 50, .., 300 after the 1/2 scale
		values[4*u+1] = float32(u)
	}
	kCache := gputest.Upload(t, testDevice, gpu.F32, keys, s.Keys(), 4)
	vCache := gputest.Upload(t, testDevice, gpu.F32, values, s.Keys(), 4)
	out := gputest.Poisoned(t, testDevice, 1, 4)
	for _, x := range []*gpu.Tensor{q, kCache, vCache, out} {
		t.Cleanup(x.Release)
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := DecodeAttention(rec, s, q, kCache, vCache, out); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	// Keys with u%7 == 6 dominate by e^50 over the next; their mean position.
	var sum, count float64
	for u := range s.Keys() {
		if u%7 == 6 {
			sum, count = sum+float64(u), count+1
		}
	}
	got := gputest.Download(t, out)
	want := []float64{0, sum / count, 0, 0}
	if err := gputest.RelL2(got, want); err > 1e-6 || math.IsNaN(err) {
		t.Errorf("out = %v, want %v", got, want)
	}
}

func TestDecodeAttentionRejectsInvalidArguments(t *testing.T) {
	good := DecodeAttentionShape{Start: 3, Rows: 2, Heads: 4, KVHeads: 2, HeadDim: 8}
	q := gputest.Poisoned(t, testDevice, 2, 32)
	cache := gputest.Poisoned(t, testDevice, 5, 16)
	short := gputest.Poisoned(t, testDevice, 4, 16)
	out := gputest.Poisoned(t, testDevice, 2, 32)
	for _, x := range []*gpu.Tensor{q, cache, short, out} {
		t.Cleanup(x.Release)
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	cases := []struct {
		name         string
		shape        DecodeAttentionShape
		q, k, v, out *gpu.Tensor
		want         string
	}{
		{"kv heads do not divide", DecodeAttentionShape{Start: 3, Rows: 2, Heads: 4, KVHeads: 3, HeadDim: 8}, q, cache, cache, out, "do not divide"},
		{"no rows", DecodeAttentionShape{Start: 3, Rows: 0, Heads: 4, KVHeads: 2, HeadDim: 8}, q, cache, cache, out, "positive"},
		{"cache too short", good, q, short, cache, out, "kCache"},
		{"out aliases q", good, q, cache, cache, q, "shares a buffer"},
		{"q wrong size", good, cache, cache, cache, out, "q has shape"},
	}
	for _, c := range cases {
		err := DecodeAttention(rec, c.shape, c.q, c.k, c.v, c.out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("invalid calls recorded %d dispatches", rec.Dispatches)
	}
}
