package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// ropeInvFreq is HF's default inverse frequencies theta^(-2e/headDim).
func ropeInvFreq(theta float64, headDim int) []float64 {
	f := make([]float64, headDim/2)
	for e := range f {
		f[e] = math.Pow(theta, -float64(2*e)/float64(headDim))
	}
	return f
}

// referenceRope rotates each head's pairs (e, e+half) by sign * pos * invFreq[e]
// in float64, pos = row mod seq.
func referenceRope(x []float32, invFreq []float64, rows, seq, heads int, sign float64) []float64 {
	half := len(invFreq)
	out := make([]float64, len(x))
	for t := range rows {
		pos := float64(t % seq)
		for h := range heads {
			base := (t*heads + h) * 2 * half
			for e, f := range invFreq {
				sin, cos := math.Sincos(sign * pos * f)
				a, b := float64(x[base+e]), float64(x[base+e+half])
				out[base+e] = a*cos - b*sin
				out[base+e+half] = b*cos + a*sin
			}
		}
	}
	return out
}

func TestRope(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	cases := []struct {
		headDim, heads, rows, seq, tableSeq int
		gridLimit                           uint32
	}{
		{8, 1, 1, 1, 1, 0},
		{8, 3, 10, 5, 7, 0},    // two batch rows; table longer than the sequences
		{16, 4, 24, 12, 12, 0}, // several heads, positions up to 11
		{16, 2, 33, 11, 40, 0},
		{8, 5, 64, 16, 16, 3}, // 2-D grid with a surplus workgroup
	}
	for _, c := range cases {
		invFreq := ropeInvFreq(10000, c.headDim)
		table, err := NewRopeTable(testDevice, invFreq, c.tableSeq)
		if err != nil {
			t.Fatal(err)
		}
		n := c.rows * c.heads * c.headDim
		x := gputest.RandFloats(rng, n)
		xt := gputest.Upload(t, testDevice, gpu.F32, x, c.rows, c.heads*c.headDim)
		rec := testDevice.NewRecorder()
		if err := rope("RopeForward", rec, table, xt, c.rows, c.seq, 0, c.heads, c.headDim, 1, c.gridLimit); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		rotated := gputest.Download(t, xt)
		if e := gputest.RelL2(rotated, referenceRope(x, invFreq, c.rows, c.seq, c.heads, 1)); !(e < 1e-5) {
			t.Errorf("head dim %d, %d heads, %d rows of seq %d: forward relative L2 error %g", c.headDim, c.heads, c.rows, c.seq, e)
		}
		if err := rope("RopeBackward", rec, table, xt, c.rows, c.seq, 0, c.heads, c.headDim, -1, c.gridLimit); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		if e := gputest.RelL2(gputest.Download(t, xt), widen(x)); !(e < 1e-5) {
			t.Errorf("head dim %d, %d heads, %d rows of seq %d: backward of forward differs from the input by %g",
				c.headDim, c.heads, c.rows, c.seq, e)
		}
		// The backward on its own is the rotation by -angle.
		if err := xt.Upload(x); err != nil {
			t.Fatal(err)
		}
		if err := RopeBackward(rec, table, xt, c.rows, c.seq, c.heads, c.headDim); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		if e := gputest.RelL2(gputest.Download(t, xt), referenceRope(x, invFreq, c.rows, c.seq, c.heads, -1)); !(e < 1e-5) {
			t.Errorf("head dim %d, %d heads: backward relative L2 error %g", c.headDim, c.heads, e)
		}
		rec.Release()
		xt.Release()
		table.Release()
	}
}

// Decoding rotates single rows at their position: row p alone, rotated by
// RopeForwardAt(start = p), must equal row p of the whole sequence's rotation.
func TestRopeForwardAt(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	const headDim, heads, seq = 16, 3, 9
	invFreq := ropeInvFreq(500000, headDim)
	table, err := NewRopeTable(testDevice, invFreq, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer table.Release()
	width := heads * headDim
	x := gputest.RandFloats(rng, seq*width)
	want := referenceRope(x, invFreq, seq, seq, heads, 1)
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for _, start := range []int{0, 4, 8} {
		row := gputest.Upload(t, testDevice, gpu.F32, x[start*width:(start+1)*width], 1, width)
		if err := RopeForwardAt(rec, table, row, 1, start, heads, headDim); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		if e := gputest.RelL2(gputest.Download(t, row), want[start*width:(start+1)*width]); !(e < 1e-5) {
			t.Errorf("row at position %d: relative L2 error %g", start, e)
		}
		row.Release()
	}
	row := gputest.Upload(t, testDevice, gpu.F32, x[:width], 1, width)
	defer row.Release()
	if err := RopeForwardAt(rec, table, row, 1, seq, heads, headDim); err == nil {
		t.Error("a position past the table was accepted")
	}
}

func TestRopeErrors(t *testing.T) {
	table, err := NewRopeTable(testDevice, ropeInvFreq(10000, 8), 4)
	if err != nil {
		t.Fatal(err)
	}
	x := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 8*2*8), 8, 16)
	defer x.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	_, noFreq := NewRopeTable(testDevice, nil, 4)
	_, nanFreq := NewRopeTable(testDevice, []float64{1, math.NaN()}, 4)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"no frequencies", noFreq, "at least one"},
		{"NaN frequency", nanFreq, "inverse frequency 1"},
		{"head dim", RopeForward(rec, table, x, 8, 4, 1, 16), "made for head dim 8"},
		{"sequence longer than table", RopeForward(rec, table, x, 8, 8, 2, 8), "covers 4 positions"},
		{"partial sequence", RopeForward(rec, table, x, 6, 4, 2, 8), "not whole sequences"},
		{"size", RopeForward(rec, table, x, 4, 4, 2, 8), "want 64 elements"},
	}
	table.Release()
	cases = append(cases, struct {
		name string
		err  error
		want string
	}{"released table", RopeBackward(rec, table, x, 8, 4, 2, 8), "nil or released"})
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
		} else if !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, c.err, c.want)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("failed calls recorded %d dispatches", rec.Dispatches)
	}
}
