package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
)

var _ model.Adapter = (*LoRA)(nil)

// loraProblem is one adapter call in float64: inputs x [T, in], A [r, in],
// B [out, r], upstream gradient dy [T, out].
type loraProblem struct {
	tokens, in, out, rank int
	scale                 float64
	x, a, b, dy           []float64
}

// forward returns xa = x A^T and the adapter's output scale * xa B^T.
func (p loraProblem) forward() (xa, y []float64) {
	xa = make([]float64, p.tokens*p.rank)
	for t := range p.tokens {
		for r := range p.rank {
			for i := range p.in {
				xa[t*p.rank+r] += p.x[t*p.in+i] * p.a[r*p.in+i]
			}
		}
	}
	y = make([]float64, p.tokens*p.out)
	for t := range p.tokens {
		for o := range p.out {
			for r := range p.rank {
				y[t*p.out+o] += p.scale * xa[t*p.rank+r] * p.b[o*p.rank+r]
			}
		}
	}
	return xa, y
}

// backward returns the gradients of sum(dy .* y) with respect to A, B and x.
func (p loraProblem) backward() (dA, dB, dx []float64) {
	xa, _ := p.forward()
	dB = make([]float64, p.out*p.rank)
	dxa := make([]float64, p.tokens*p.rank)
	for t := range p.tokens {
		for o := range p.out {
			g := p.scale * p.dy[t*p.out+o]
			for r := range p.rank {
				dB[o*p.rank+r] += g * xa[t*p.rank+r]
				dxa[t*p.rank+r] += g * p.b[o*p.rank+r]
			}
		}
	}
	dA = make([]float64, p.rank*p.in)
	dx = make([]float64, p.tokens*p.in)
	for t := range p.tokens {
		for r := range p.rank {
			for i := range p.in {
				dA[r*p.in+i] += dxa[t*p.rank+r] * p.x[t*p.in+i]
				dx[t*p.in+i] += dxa[t*p.rank+r] * p.a[r*p.in+i]
			}
		}
	}
	return dA, dB, dx
}

// loss is sum(dy .* y), whose gradients backward computes.
func (p loraProblem) loss() float64 {
	_, y := p.forward()
	var l float64
	for i, v := range y {
		l += p.dy[i] * v
	}
	return l
}

func randFloat64s(rng *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

// TestReferenceGradients checks the float64 reference backward against central
// differences of the loss. The loss is bilinear in (A, B) and linear in x, so
// central differences are exact up to rounding.
func TestReferenceGradients(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := loraProblem{tokens: 3, in: 5, out: 4, rank: 2, scale: 1.5}
	p.x = randFloat64s(rng, p.tokens*p.in)
	p.a = randFloat64s(rng, p.rank*p.in)
	p.b = randFloat64s(rng, p.out*p.rank)
	p.dy = randFloat64s(rng, p.tokens*p.out)
	dA, dB, dx := p.backward()
	const h = 1e-4
	for _, c := range []struct {
		name     string
		values   []float64
		analytic []float64
	}{{"A", p.a, dA}, {"B", p.b, dB}, {"x", p.x, dx}} {
		for i := range c.values {
			orig := c.values[i]
			c.values[i] = orig + h
			up := p.loss()
			c.values[i] = orig - h
			down := p.loss()
			c.values[i] = orig
			numeric := (up - down) / (2 * h)
			if d := math.Abs(numeric - c.analytic[i]); d > 1e-8*(1+math.Abs(numeric)) {
				t.Errorf("d loss / d %s[%d]: reference %g, finite difference %g", c.name, i, c.analytic[i], numeric)
			}
		}
	}
}

func toFloat32s(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// TestForwardBackward runs one Forward and Backward against the float64
// reference. Activations have spare rows past tokens (NaN in inputs, which
// must not be read; random in accumulated outputs, which must not change),
// the adapter's own xa and dxa start as NaN, and y, dx, dA and dB start with
// random values that the results must be added to.
func TestForwardBackward(t *testing.T) {
	for _, c := range []struct{ tokens, in, out, rank, spare int }{
		{7, 13, 11, 3, 2},
		{33, 64, 48, 8, 5},
	} {
		t.Run(fmt.Sprintf("T%d_in%d_out%d_r%d", c.tokens, c.in, c.out, c.rank), func(t *testing.T) {
			testForwardBackward(t, c.tokens, c.in, c.out, c.rank, c.spare)
		})
	}
}

func testForwardBackward(t *testing.T, tokens, in, out, rank, spare int) {
	rng := rand.New(rand.NewPCG(uint64(tokens), uint64(in)))
	rows := tokens + spare
	const alpha = 16
	l, err := New(testDevice, in, out, rank, alpha)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	xaT := gputest.Upload(t, testDevice, gpu.F32, gputest.NaNs(rows*rank), rows, rank)
	defer xaT.Release()
	dxaT := gputest.Upload(t, testDevice, gpu.F32, gputest.NaNs(rows*rank), rows, rank)
	defer dxaT.Release()

	a := gputest.RandFloats(rng, rank*in)
	b := gputest.RandFloats(rng, out*rank)
	if err := l.SetWeights(a, b); err != nil {
		t.Fatal(err)
	}
	gradA0 := gputest.RandFloats(rng, rank*in)
	gradB0 := gputest.RandFloats(rng, out*rank)
	gradA, gradB := l.Grads()
	if err := gradA.Upload(gradA0); err != nil {
		t.Fatal(err)
	}
	if err := gradB.Upload(gradB0); err != nil {
		t.Fatal(err)
	}

	// withSpare pads tokens rows of width values with spare rows of fill.
	withSpare := func(v []float32, width int, fill []float32) []float32 {
		return append(append([]float32(nil), v...), fill[:spare*width]...)
	}
	x := gputest.RandFloats(rng, tokens*in)
	dy := gputest.RandFloats(rng, tokens*out)
	y0 := gputest.RandFloats(rng, rows*out)
	dx0 := gputest.RandFloats(rng, rows*in)
	xT := gputest.Upload(t, testDevice, gpu.F32, withSpare(x, in, gputest.NaNs(spare*in)), rows, in)
	defer xT.Release()
	dyT := gputest.Upload(t, testDevice, gpu.F32, withSpare(dy, out, gputest.NaNs(spare*out)), rows, out)
	defer dyT.Release()
	yT := gputest.Upload(t, testDevice, gpu.F32, y0, rows, out)
	defer yT.Release()
	dxT := gputest.Upload(t, testDevice, gpu.F32, dx0, rows, in)
	defer dxT.Release()

	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := l.Forward(rec, xT, yT, xaT, model.RowSet{Count: tokens}); err != nil {
		t.Fatal(err)
	}
	if err := l.Backward(rec, xT, xaT, dyT, dxT, dxaT, model.RowSet{Count: tokens}); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)

	p := loraProblem{tokens: tokens, in: in, out: out, rank: rank, scale: float64(l.Scale()),
		x: gputest.Float64s(x), a: gputest.Float64s(a), b: gputest.Float64s(b), dy: gputest.Float64s(dy)}
	if want := float64(alpha) / float64(rank); p.scale != float64(float32(want)) {
		t.Errorf("scale %g, want alpha/rank = %g", p.scale, want)
	}
	xaWant, yDelta := p.forward()
	dA, dB, dx := p.backward()
	plus := func(base []float32, delta []float64) []float64 {
		out := gputest.Float64s(base)
		for i, d := range delta {
			out[i] += d
		}
		return out
	}
	check := func(what string, got []float32, want []float64, tol float64) {
		t.Helper()
		e := gputest.RelL2(got, want)
		if !(e < tol) {
			t.Errorf("%s: relative L2 error %g (tolerance %g)", what, e, tol)
		}
		t.Logf("%s: relative L2 error %.2g", what, e)
	}
	check("xa", gputest.Download(t, xaT)[:tokens*rank], xaWant, 1e-5)
	check("y", gputest.Download(t, yT), plus(y0, yDelta), 1e-5)
	check("dA", gputest.Download(t, gradA), plus(gradA0, dA), 1e-4)
	check("dB", gputest.Download(t, gradB), plus(gradB0, dB), 1e-4)
	check("dx", gputest.Download(t, dxT), plus(dx0, dx), 1e-4)
	// The same checks on the increments alone, which the random starting
	// values would otherwise dominate.
	check("y increment", sub(gputest.Download(t, yT)[:tokens*out], y0), yDelta, 1e-5)
	check("dA increment", sub(gputest.Download(t, gradA), gradA0), dA, 1e-4)
	check("dB increment", sub(gputest.Download(t, gradB), gradB0), dB, 1e-4)
	check("dx increment", sub(gputest.Download(t, dxT)[:tokens*in], dx0), dx, 1e-4)
}

// sub is got - base over got's length, in float32 as the GPU sees the values.
func sub(got, base []float32) []float32 {
	out := make([]float32, len(got))
	for i := range got {
		out[i] = got[i] - base[i]
	}
	return out
}

// TestGradientsAccumulate runs two micro-batches and checks that the
// gradients add up, then that ZeroGrad clears them.
func TestGradientsAccumulate(t *testing.T) {
	const tokens, in, out, rank = 5, 9, 6, 2
	rng := rand.New(rand.NewPCG(5, 6))
	l, err := New(testDevice, in, out, rank, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	xaT := gputest.Upload(t, testDevice, gpu.F32, make([]float32, tokens*rank), tokens, rank)
	defer xaT.Release()
	dxaT := gputest.Upload(t, testDevice, gpu.F32, make([]float32, tokens*rank), tokens, rank)
	defer dxaT.Release()
	a := gputest.RandFloats(rng, rank*in)
	b := gputest.RandFloats(rng, out*rank)
	if err := l.SetWeights(a, b); err != nil {
		t.Fatal(err)
	}
	wantA := make([]float64, rank*in)
	wantB := make([]float64, out*rank)
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for range 2 {
		x := gputest.RandFloats(rng, tokens*in)
		dy := gputest.RandFloats(rng, tokens*out)
		xT := gputest.Upload(t, testDevice, gpu.F32, x, tokens, in)
		dyT := gputest.Upload(t, testDevice, gpu.F32, dy, tokens, out)
		yT := gputest.Upload(t, testDevice, gpu.F32, make([]float32, tokens*out), tokens, out)
		dxT := gputest.Upload(t, testDevice, gpu.F32, make([]float32, tokens*in), tokens, in)
		if err := l.Forward(rec, xT, yT, xaT, model.RowSet{Count: tokens}); err != nil {
			t.Fatal(err)
		}
		if err := l.Backward(rec, xT, xaT, dyT, dxT, dxaT, model.RowSet{Count: tokens}); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		p := loraProblem{tokens: tokens, in: in, out: out, rank: rank, scale: float64(l.Scale()),
			x: gputest.Float64s(x), a: gputest.Float64s(a), b: gputest.Float64s(b), dy: gputest.Float64s(dy)}
		dA, dB, _ := p.backward()
		for i := range dA {
			wantA[i] += dA[i]
		}
		for i := range dB {
			wantB[i] += dB[i]
		}
		for _, x := range []*gpu.Tensor{xT, dyT, yT, dxT} {
			x.Release()
		}
	}
	gradA, gradB := l.Grads()
	if e := gputest.RelL2(gputest.Download(t, gradA), wantA); !(e < 1e-5) {
		t.Errorf("dA over two micro-batches: relative L2 error %g", e)
	}
	if e := gputest.RelL2(gputest.Download(t, gradB), wantB); !(e < 1e-5) {
		t.Errorf("dB over two micro-batches: relative L2 error %g", e)
	}
	if err := l.ZeroGrad(rec); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	for name, g := range map[string]*gpu.Tensor{"dA": gradA, "dB": gradB} {
		for i, v := range gputest.Download(t, g) {
			if v != 0 {
				t.Fatalf("%s[%d] = %g after ZeroGrad", name, i, v)
			}
		}
	}
}

func TestInitPEFT(t *testing.T) {
	const in, out, rank = 64, 48, 8
	weights := func(seed uint64) (a, b []float32) {
		t.Helper()
		l, err := New(testDevice, in, out, rank, 16)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		if err := l.SetWeights(gputest.RandFloats(rand.New(rand.NewPCG(9, 9)), rank*in), gputest.RandFloats(rand.New(rand.NewPCG(9, 9)), out*rank)); err != nil {
			t.Fatal(err)
		}
		if err := l.InitPEFT(rand.New(rand.NewPCG(seed, 1))); err != nil {
			t.Fatal(err)
		}
		a, b, err = l.Weights()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
	a, b := weights(42)
	bound := KaimingUniformBound(in)
	// torch: gain = sqrt(2 / (1 + a^2)) with a = sqrt(5), bound = sqrt(3) gain / sqrt(fan_in).
	if torch := math.Sqrt(3) * math.Sqrt(2/(1+5.0)) / math.Sqrt(in); math.Abs(bound-torch) > 1e-15 || bound != 0.125 {
		t.Fatalf("bound %g, want %g (= 1/sqrt(%d))", bound, torch, in)
	}
	var sum, sumSquares, largest float64
	for i, v := range a {
		if !(math.Abs(float64(v)) <= float64(float32(bound))) {
			t.Fatalf("A[%d] = %g outside [-%g, %g]", i, v, bound, bound)
		}
		sum += float64(v)
		sumSquares += float64(v) * float64(v)
		largest = max(largest, math.Abs(float64(v)))
	}
	n := float64(len(a))
	mean := sum / n
	variance := sumSquares/n - mean*mean
	// Uniform(-b, b) has mean 0 and variance b^2/3; with 512 samples the
	// standard errors are about b/39 and 4% of the variance.
	if math.Abs(mean) > 0.15*bound {
		t.Errorf("mean of A %g, want about 0 (bound %g)", mean, bound)
	}
	if want := bound * bound / 3; math.Abs(variance-want) > 0.2*want {
		t.Errorf("variance of A %g, want about %g", variance, want)
	}
	if largest < 0.95*bound {
		t.Errorf("largest |A| %g does not approach the bound %g", largest, bound)
	}
	for i, v := range b {
		if v != 0 {
			t.Fatalf("B[%d] = %g, want 0", i, v)
		}
	}
	again, _ := weights(42)
	other, _ := weights(43)
	same, differs := true, false
	for i := range a {
		same = same && a[i] == again[i]
		differs = differs || a[i] != other[i]
	}
	if !same {
		t.Error("the same seed gave different A")
	}
	if !differs {
		t.Error("different seeds gave the same A")
	}
}

func TestWeightsRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	l, err := New(testDevice, 5, 3, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	a, b := gputest.RandFloats(rng, 10), gputest.RandFloats(rng, 6)
	if err := l.SetWeights(a, b); err != nil {
		t.Fatal(err)
	}
	gotA, gotB, err := l.Weights()
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if gotA[i] != a[i] {
			t.Fatalf("A[%d] = %g, want %g", i, gotA[i], a[i])
		}
	}
	for i := range b {
		if gotB[i] != b[i] {
			t.Fatalf("B[%d] = %g, want %g", i, gotB[i], b[i])
		}
	}
	if err := l.SetWeights(b, a); err == nil {
		t.Error("SetWeights accepted A and B of the wrong lengths")
	}
}

func TestInvalidArguments(t *testing.T) {
	for _, c := range []struct {
		in, out, rank int
		alpha         float32
	}{
		{0, 4, 2, 1}, {4, 4, 0, 1}, {4, 4, 2, 0}, {4, 4, 2, float32(math.NaN())},
	} {
		if l, err := New(testDevice, c.in, c.out, c.rank, c.alpha); err == nil {
			l.Release()
			t.Errorf("New(%d, %d, %d, %g) succeeded", c.in, c.out, c.rank, c.alpha)
		}
	}
	l, err := New(testDevice, 4, 3, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	x := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 24), 6, 4)
	defer x.Release()
	y := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 18), 6, 3)
	defer y.Release()
	xa := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10), 5, 2)
	defer xa.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for name, err := range map[string]error{
		"tokens over xa's rows":  l.Forward(rec, x, y, xa, model.RowSet{Count: 6}),
		"negative tokens":        l.Forward(rec, x, y, xa, model.RowSet{Count: -1}),
		"x and y swapped":        l.Forward(rec, y, x, xa, model.RowSet{Count: 2}),
		"xa of the wrong width":  l.Forward(rec, x, y, y, model.RowSet{Count: 2}),
		"dx of the wrong width":  l.Backward(rec, x, xa, y, y, xa, model.RowSet{Count: 2}),
		"nil dy":                 l.Backward(rec, x, xa, nil, x, xa, model.RowSet{Count: 2}),
		"nil dxa":                l.Backward(rec, x, xa, y, x, nil, model.RowSet{Count: 2}),
		"too few rows (forward)": l.Forward(rec, x, &gpu.Tensor{Buf: y.Buf, Offset: y.Offset, Shape: []int{3}, DType: gpu.F32}, xa, model.RowSet{Count: 2}),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestForwardBackwardOnRowList runs the adapter on a list of token rows (the
// real tokens of a padded batch): the listed rows get the reference values,
// the gradients sum over them only, and the other rows, which hold NaN in x
// and dy, are neither read nor written.
func TestForwardBackwardOnRowList(t *testing.T) {
	const T, in, out, rank = 9, 11, 7, 3
	rows := []int{0, 2, 3, 7}
	rng := rand.New(rand.NewPCG(8, 9))
	l, err := New(testDevice, in, out, rank, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	a, b := gputest.RandFloats(rng, rank*in), gputest.RandFloats(rng, out*rank)
	if err := l.SetWeights(a, b); err != nil {
		t.Fatal(err)
	}
	listed := map[int]bool{}
	for _, r := range rows {
		listed[r] = true
	}
	// x and dy: random on the listed rows, NaN elsewhere.
	withNaN := func(width int) ([]float32, []float64) {
		full, compact := gputest.NaNs(T*width), []float64{}
		for r := range T {
			if !listed[r] {
				continue
			}
			for c := range width {
				v := float32(rng.NormFloat64())
				full[r*width+c] = v
				compact = append(compact, float64(v))
			}
		}
		return full, compact
	}
	x, xCompact := withNaN(in)
	dy, dyCompact := withNaN(out)
	y0 := gputest.RandFloats(rng, T*out)
	dx0 := gputest.RandFloats(rng, T*in)
	xT := gputest.Upload(t, testDevice, gpu.F32, x, T, in)
	dyT := gputest.Upload(t, testDevice, gpu.F32, dy, T, out)
	yT := gputest.Upload(t, testDevice, gpu.F32, y0, T, out)
	dxT := gputest.Upload(t, testDevice, gpu.F32, dx0, T, in)
	xaT := gputest.Upload(t, testDevice, gpu.F32, gputest.NaNs(T*rank), T, rank)
	dxaT := gputest.Upload(t, testDevice, gpu.F32, gputest.NaNs(T*rank), T, rank)
	for _, tt := range []*gpu.Tensor{xT, dyT, yT, dxT, xaT, dxaT} {
		defer tt.Release()
	}
	words := []uint32{uint32(len(rows))}
	for _, r := range rows {
		words = append(words, uint32(r))
	}
	buf, err := testDevice.NewBuffer(uint64(4*len(words)), "row list")
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Release()
	if err := buf.Write(0, gpu.U32Bytes(words)); err != nil {
		t.Fatal(err)
	}
	set := model.RowSet{List: &gpu.IndexList{Buf: buf}, Count: len(rows)}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := l.ZeroGrad(rec); err != nil {
		t.Fatal(err)
	}
	if err := l.Forward(rec, xT, yT, xaT, set); err != nil {
		t.Fatal(err)
	}
	if err := l.Backward(rec, xT, xaT, dyT, dxT, dxaT, set); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)

	p := loraProblem{tokens: len(rows), in: in, out: out, rank: rank, scale: float64(l.Scale()),
		x: xCompact, a: gputest.Float64s(a), b: gputest.Float64s(b), dy: dyCompact}
	_, yDelta := p.forward()
	dA, dB, dxDelta := p.backward()
	gotY, gotDx := gputest.Download(t, yT), gputest.Download(t, dxT)
	wantY, wantDx := make([]float64, 0), make([]float64, 0)
	var gotYListed, gotDxListed []float32
	for i, r := range rows {
		for c := range out {
			gotYListed = append(gotYListed, gotY[r*out+c])
			wantY = append(wantY, float64(y0[r*out+c])+yDelta[i*out+c])
		}
		for c := range in {
			gotDxListed = append(gotDxListed, gotDx[r*in+c])
			wantDx = append(wantDx, float64(dx0[r*in+c])+dxDelta[i*in+c])
		}
	}
	for r := range T {
		if listed[r] {
			continue
		}
		for c := range out {
			if gotY[r*out+c] != y0[r*out+c] {
				t.Fatalf("y row %d (not listed) changed", r)
			}
		}
		for c := range in {
			if gotDx[r*in+c] != dx0[r*in+c] {
				t.Fatalf("dx row %d (not listed) changed", r)
			}
		}
	}
	gradA, gradB := l.Grads()
	for _, c := range []struct {
		name string
		got  []float32
		want []float64
	}{{"y", gotYListed, wantY}, {"dx", gotDxListed, wantDx}, {"dA", gputest.Download(t, gradA), dA}, {"dB", gputest.Download(t, gradB), dB}} {
		if e := gputest.RelL2(c.got, c.want); !(e < 1e-5) {
			t.Errorf("%s on listed rows: relative L2 error %g", c.name, e)
		}
	}
}
