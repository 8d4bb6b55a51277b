package gpu_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// smallGridLimit forces the 2-D grid path (and surplus workgroups in its last
// row) at sizes a test can afford: 1000003 elements take 64 x 62 workgroups and
// 129 rows 64 x 3. Real devices allow 65535 per dimension.
const smallGridLimit = 64

func submitAndRelease(t *testing.T, rec *gpu.Recorder) {
	t.Helper()
	defer rec.Release()
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
}

func axpbyReference(y, x []float32, alpha, beta float64) []float64 {
	want := make([]float64, len(x))
	for i := range want {
		if alpha != 0 {
			want[i] = alpha * float64(x[i])
		}
		if beta != 0 {
			want[i] += beta * float64(y[i])
		}
	}
	return want
}

func rowReference(x []float32, rows, cols int, squares bool) []float64 {
	want := make([]float64, rows)
	for r := range want {
		for _, v := range x[r*cols : (r+1)*cols] {
			if squares {
				want[r] += float64(v) * float64(v)
			} else {
				want[r] += float64(v)
			}
		}
	}
	return want
}

func nanFloats(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return v
}

func checkClose(t *testing.T, what string, got []float32, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", what, len(got), len(want))
	}
	// NaN fails the comparison, so unwritten (poisoned) elements are caught.
	if e := gputest.RelL2(got, want); !(e < 1e-5) {
		t.Errorf("%s: relative L2 error %g", what, e)
	}
}

func TestAxpby(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		alpha, beta float32
		poisonY     bool // beta = 0 must not read y
		poisonX     bool // alpha = 0 must not read x
	}{
		{alpha: 1.5, beta: 0, poisonY: true},
		{alpha: 1, beta: 1},
		{alpha: -0.25, beta: 0.75},
		{alpha: 0, beta: 2, poisonX: true},
	}
	for _, n := range []int{1, 7, 1000003} {
		for _, limit := range []uint32{testDevice.Limits.MaxComputeWorkgroupsPerDimension, smallGridLimit} {
			for _, c := range cases {
				name := fmt.Sprintf("n=%d/grid=%d/alpha=%g/beta=%g", n, limit, c.alpha, c.beta)
				xData, yData := gputest.RandFloats(rng, n), gputest.RandFloats(rng, n)
				if c.poisonX {
					xData = nanFloats(n)
				}
				if c.poisonY {
					yData = nanFloats(n)
				}
				x, y := gputest.Upload(t, testDevice, gpu.F32, xData, n), gputest.Upload(t, testDevice, gpu.F32, yData, n)
				rec := testDevice.NewRecorder()
				if err := gpu.AxpbyWithGridLimit(rec, y, x, c.alpha, c.beta, limit); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				submitAndRelease(t, rec)
				checkClose(t, name, gputest.Download(t, y), axpbyReference(yData, xData, float64(c.alpha), float64(c.beta)))
				x.Release()
				y.Release()
			}
		}
	}
}

func TestScale(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 7, 1000003} {
		for _, limit := range []uint32{testDevice.Limits.MaxComputeWorkgroupsPerDimension, smallGridLimit} {
			name := fmt.Sprintf("n=%d/grid=%d", n, limit)
			data := gputest.RandFloats(rng, n)
			y := gputest.Upload(t, testDevice, gpu.F32, data, n)
			rec := testDevice.NewRecorder()
			if err := gpu.ScaleWithGridLimit(rec, y, -0.5, limit); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			submitAndRelease(t, rec)
			checkClose(t, name, gputest.Download(t, y), axpbyReference(data, data, 0, -0.5))
			y.Release()
		}
	}
}

func TestRowSum(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	shapes := [][2]int{{1, 1}, {7, 13}, {129, 65}, {3, 5000}, {4, 0}}
	for _, squares := range []bool{false, true} {
		op := gpu.OpRowSum
		if squares {
			op = gpu.OpRowSumSquares
		}
		for _, shape := range shapes {
			for _, limit := range []uint32{testDevice.Limits.MaxComputeWorkgroupsPerDimension, smallGridLimit} {
				rows, cols := shape[0], shape[1]
				name := fmt.Sprintf("%s/%dx%d/grid=%d", op, rows, cols, limit)
				data := gputest.RandFloats(rng, rows*cols)
				x := gputest.Upload(t, testDevice, gpu.F32, data, rows, cols)
				out := gputest.Poisoned(t, testDevice, rows)
				rec := testDevice.NewRecorder()
				if err := gpu.RowReduceWithGridLimit(rec, op, out, x, rows, cols, limit); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				submitAndRelease(t, rec)
				checkClose(t, name, gputest.Download(t, out), rowReference(data, rows, cols, squares))
				x.Release()
				out.Release()
			}
		}
	}
}

// TestRowSumOffsetsAndSharedBuffers records a chain of operations on views at
// unaligned offsets, some reading and writing the same buffer, into one
// submission, and checks each result and that nothing outside the views
// changed.
func TestRowSumOffsetsAndSharedBuffers(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	arenaData, otherData := gputest.RandFloats(rng, 1024), gputest.RandFloats(rng, 512)
	arena, other := gputest.Upload(t, testDevice, gpu.F32, arenaData, 1024), gputest.Upload(t, testDevice, gpu.F32, otherData, 512)
	defer arena.Release()
	defer other.Release()

	// The reference applies the same operations, in order, in float64.
	want := map[*gpu.Tensor][]float64{arena: toFloat64(arenaData), other: toFloat64(otherData)}
	touched := map[*gpu.Tensor][]bool{arena: make([]bool, 1024), other: make([]bool, 512)}
	type view struct {
		t           *gpu.Tensor
		start, size int
	}
	tensorOf := func(v view) *gpu.Tensor {
		return &gpu.Tensor{Buf: v.t.Buf, Offset: uint64(4 * v.start), Shape: []int{v.size}, DType: gpu.F32}
	}
	values := func(v view) []float64 { return want[v.t][v.start : v.start+v.size] }
	markTouched := func(v view) {
		for i := v.start; i < v.start+v.size; i++ {
			touched[v.t][i] = true
		}
	}

	rec := testDevice.NewRecorder()
	defer rec.Release()
	axpbyStep := func(y, x view, alpha, beta float32) {
		t.Helper()
		if err := gpu.Axpby(rec, tensorOf(y), tensorOf(x), alpha, beta); err != nil {
			t.Fatal(err)
		}
		xs, ys := append([]float64(nil), values(x)...), values(y)
		for i := range ys {
			ys[i] = float64(alpha)*xs[i] + float64(beta)*ys[i]
		}
		markTouched(y)
	}
	rowStep := func(out, x view, rows, cols int, squares bool) {
		t.Helper()
		reduce := gpu.RowSum
		if squares {
			reduce = gpu.RowSumSquares
		}
		if err := reduce(rec, tensorOf(out), tensorOf(x), rows, cols); err != nil {
			t.Fatal(err)
		}
		xs, outs := values(x), values(out)
		for r := range outs {
			outs[r] = 0
			for _, v := range xs[r*cols : (r+1)*cols] {
				if squares {
					outs[r] += v * v
				} else {
					outs[r] += v
				}
			}
		}
		markTouched(out)
	}

	axpbyStep(view{arena, 17, 300}, view{other, 5, 300}, 2, -1)         // separate buffers
	axpbyStep(view{arena, 400, 30}, view{arena, 440, 30}, 0.5, 1)       // one buffer, one 256-byte window
	axpbyStep(view{arena, 500, 30}, view{arena, 500, 30}, 3, 0)         // x is y
	rowStep(view{arena, 600, 7}, view{arena, 17, 7 * 13}, 7, 13, false) // reads the first step's output
	rowStep(view{other, 400, 3}, view{arena, 700, 3 * 100}, 3, 100, true)
	if err := gpu.Scale(rec, tensorOf(view{arena, 1001, 9}), -2); err != nil {
		t.Fatal(err)
	}
	for i, v := range values(view{arena, 1001, 9}) {
		want[arena][1001+i] = -2 * v
	}
	markTouched(view{arena, 1001, 9})
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}

	for _, buf := range []*gpu.Tensor{arena, other} {
		got := gputest.Download(t, buf)
		initial := map[*gpu.Tensor][]float32{arena: arenaData, other: otherData}[buf]
		var gotTouched []float32
		var wantTouched []float64
		for i, changed := range touched[buf] {
			if changed {
				gotTouched = append(gotTouched, got[i])
				wantTouched = append(wantTouched, want[buf][i])
			} else if math.Float32bits(got[i]) != math.Float32bits(initial[i]) {
				t.Errorf("element %d outside every view changed from %g to %g", i, initial[i], got[i])
			}
		}
		checkClose(t, "views", gotTouched, wantTouched)
	}
}

func toFloat64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

func TestElementwiseSplitGrid(t *testing.T) {
	cases := []struct {
		groups uint64
		limit  uint32
		gx, gy uint32
		fails  bool
	}{
		{groups: 1, limit: 65535, gx: 1, gy: 1},
		{groups: 65535, limit: 65535, gx: 65535, gy: 1},
		{groups: 65536, limit: 65535, gx: 65535, gy: 2},
		{groups: 3907, limit: 64, gx: 64, gy: 62},
		{groups: 64*64 + 1, limit: 64, fails: true},
		{groups: 1, limit: 0, fails: true},
	}
	for _, c := range cases {
		gx, gy, err := gpu.SplitGrid(c.groups, c.limit)
		if c.fails {
			if err == nil {
				t.Errorf("SplitGrid(%d, %d) = %d x %d, want an error", c.groups, c.limit, gx, gy)
			}
			continue
		}
		if err != nil || gx != c.gx || gy != c.gy {
			t.Errorf("SplitGrid(%d, %d) = %d x %d, %v; want %d x %d", c.groups, c.limit, gx, gy, err, c.gx, c.gy)
		}
	}
}

func TestAxpbyScaleRowSumRejectInvalidArguments(t *testing.T) {
	a := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 64), 64)
	defer a.Release()
	b := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 63), 63)
	defer b.Release()
	half := gputest.Upload(t, testDevice, gpu.BF16, make([]float32, 64), 64)
	defer half.Release()
	released := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 64), 64)
	released.Release()
	view := func(offset uint64, shape ...int) *gpu.Tensor {
		return &gpu.Tensor{Buf: a.Buf, Offset: offset, Shape: shape, DType: gpu.F32}
	}

	rec := testDevice.NewRecorder()
	defer rec.Release()
	cases := []struct {
		name string
		call func() error
		want string // a fragment of the message
	}{
		{"length mismatch", func() error { return gpu.Axpby(rec, a, b, 1, 1) }, "elements"},
		{"bf16 input", func() error { return gpu.Axpby(rec, a, half, 1, 1) }, "f32"},
		{"nil tensor", func() error { return gpu.Axpby(rec, nil, a, 1, 1) }, "nil"},
		{"nil recorder", func() error { return gpu.Axpby(nil, a, a, 1, 1) }, "recorder"},
		{"released buffer", func() error { return gpu.Scale(rec, released, 2) }, "released"},
		{"unaligned offset", func() error { return gpu.Scale(rec, view(2, 4), 2) }, "multiple of 4"},
		{"view past the end", func() error { return gpu.Scale(rec, view(4*60, 8), 2) }, "overruns"},
		{"negative dimension", func() error { return gpu.Scale(rec, view(0, -2, -3), 2) }, "negative"},
		{"partial overlap", func() error { return gpu.Axpby(rec, view(0, 10), view(4*5, 10), 1, 1) }, "overlap"},
		{"rows*cols mismatch", func() error { return gpu.RowSum(rec, view(0, 4), b, 4, 16) }, "rows*cols"},
		{"out length", func() error { return gpu.RowSum(rec, b, a, 4, 16) }, "one per row"},
		{"negative rows", func() error { return gpu.RowSumSquares(rec, b, a, -4, -16) }, "negative"},
		{"out overlaps x", func() error { return gpu.RowSum(rec, view(0, 4), view(0, 4, 16), 4, 16) }, "overlap"},
		{"bf16 rows", func() error { return gpu.RowSumSquares(rec, view(0, 4), half, 4, 16) }, "f32"},
	}
	for _, c := range cases {
		err := c.call()
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.want)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("rejected calls recorded %d dispatches", rec.Dispatches)
	}
	if err := rec.Submit(); err != nil {
		t.Errorf("submitting after rejected calls: %v", err)
	}
}

// TestScaleReleasesPlaceholder checks that Scale (which binds the device's
// placeholder to its unused input binding) leaves no objects behind.
func TestScaleReleasesPlaceholder(t *testing.T) {
	y := gputest.Upload(t, testDevice, gpu.F32, []float32{1, 2, 3}, 3)
	defer y.Release()
	run := func() {
		rec := testDevice.NewRecorder()
		if err := gpu.Scale(rec, y, 2); err != nil {
			t.Fatal(err)
		}
		submitAndRelease(t, rec)
		if err := testDevice.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run() // compiles the kernel, which stays cached
	before := testDevice.LiveObjects()
	run()
	if after := testDevice.LiveObjects(); after != before {
		t.Errorf("live objects went from %d to %d", before, after)
	}
	checkClose(t, "y", gputest.Download(t, y), []float64{4, 8, 12})
}
