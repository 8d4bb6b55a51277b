package gpu_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// gemmCase is one GEMM problem with its stored operands on the host.
type gemmCase struct {
	m, n, k        int // logical (upper-bound) sizes
	aTrans, bTrans bool
	bf16           bool
	affine         *gpu.Affine // B is a quantized weight (stored [N, K] when bTrans, else [K, N])
	alpha, beta    float32
	// index lists (nil: dense axis) and the stored extents they index into
	am, bn, kk, cm []uint32
	gatherAK       bool
	scatterCN      bool
	storedM        int // rows of stored A when am is set
	storedN        int // columns of stored B (and C when scatterCN) when bn is set
	storedK        int // K extent of stored B (and A when gatherAK) when kk is set
	storedCM       int // rows of C when cm is set
	tile           *gpu.Tile
	bnMax          int // IndexList.Max of the bn list
	// aNaNPad stores A with this many NaN elements past its K extent (along
	// each row, LDA = K + aNaNPad, or as trailing rows when aTrans): a kernel
	// that reads op(A) past K makes NaNs.
	aNaNPad int
}

func (c gemmCase) String() string {
	layout := map[bool]string{false: "N", true: "T"}
	s := fmt.Sprintf("%dx%dx%d/%s%s", c.m, c.n, c.k, layout[c.aTrans], layout[c.bTrans])
	if c.bf16 {
		s += "/bf16"
	}
	if c.affine != nil {
		s += "/" + c.affine.String()
	}
	if c.am != nil || c.bn != nil || c.kk != nil || c.cm != nil {
		s += "/gather"
	}
	if c.tile != nil {
		s += "/" + c.tile.String()
	}
	return s
}

// count is the real size along an axis: the list length when a list is given.
func count(list []uint32, bound int) int {
	if list != nil {
		return len(list)
	}
	return bound
}

func pick(list []uint32, i int) int {
	if list != nil {
		return int(list[i])
	}
	return i
}

func runGemmCase(t *testing.T, rng *rand.Rand, c gemmCase) {
	t.Helper()
	M := count(c.am, count(c.cm, c.m))
	N := count(c.bn, c.n)
	K := count(c.kk, c.k)

	// Stored extents.
	aRows := c.m
	if c.am != nil {
		aRows = c.storedM
	}
	aCols := c.k // A's K extent
	if c.kk != nil {
		aCols = K
		if c.gatherAK {
			aCols = c.storedK
		}
	}
	bK := c.k
	if c.kk != nil {
		bK = c.storedK
	}
	bN := c.n
	if c.bn != nil {
		bN = c.storedN
	}
	cRows := c.m
	if c.cm != nil {
		cRows = c.storedCM
	}
	cCols := c.n
	if c.scatterCN {
		cCols = c.storedN
	}

	aData := gputest.RandFloats(rng, aRows*aCols)
	bData := gputest.RandFloats(rng, bK*bN)
	if c.bf16 { // the reference sees the weights as the GPU does
		for i, v := range bData {
			bData[i] = gpu.FromBF16(gpu.ToBF16(v))
		}
	}
	bRef := gputest.Float64s(bData) // logical [bK, bN]
	var affine *gpu.AffineWeight
	if c.affine != nil {
		out, in := bK, bN
		if c.bTrans {
			out, in = bN, bK
		}
		affine = gputest.RandAffine(rng, out, in, *c.affine)
		w := gputest.DequantizeF64(affine)
		for q := 0; q < bK; q++ {
			for n := 0; n < bN; n++ {
				if c.bTrans {
					bRef[q*bN+n] = w[n*bK+q]
				} else {
					bRef[q*bN+n] = w[q*bN+n]
				}
			}
		}
	}
	var aShape, bShape []int
	lda := aCols + c.aNaNPad // the stored row length when !aTrans
	if c.aTrans {
		aShape = []int{aCols + c.aNaNPad, aRows}
		lda = aRows
	} else {
		aShape = []int{aRows, lda}
	}
	if c.bTrans {
		bShape = []int{bN, bK}
	} else {
		bShape = []int{bK, bN}
	}
	aStore := gputest.NaNs(aRows * (aCols + c.aNaNPad))
	for r := 0; r < aRows; r++ {
		for q := 0; q < aCols; q++ {
			if c.aTrans {
				aStore[q*aRows+r] = aData[r*aCols+q]
			} else {
				aStore[r*lda+q] = aData[r*aCols+q]
			}
		}
	}
	bStore := make([]float32, len(bData))
	for q := 0; q < bK; q++ {
		for n := 0; n < bN; n++ {
			if c.bTrans {
				bStore[n*bK+q] = bData[q*bN+n]
			} else {
				bStore[q*bN+n] = bData[q*bN+n]
			}
		}
	}
	dtype := gpu.F32
	if c.bf16 {
		dtype = gpu.BF16
	}
	A := gputest.Upload(t, testDevice, gpu.F32, aStore, aShape...)
	defer A.Release()
	var B *gpu.Tensor
	if affine != nil {
		B = gputest.UploadAffine(t, testDevice, affine)
	} else {
		B = gputest.Upload(t, testDevice, dtype, bStore, bShape...)
	}
	defer B.Release()
	var C *gpu.Tensor
	cInit := make([]float32, cRows*cCols)
	if c.beta != 0 {
		cInit = gputest.RandFloats(rng, cRows*cCols)
		C = gputest.Upload(t, testDevice, gpu.F32, cInit, cRows, cCols)
	} else {
		C = gputest.Poisoned(t, testDevice, cRows, cCols)
		for i := range cInit {
			cInit[i] = float32(math.NaN())
		}
	}
	defer C.Release()

	args := gpu.GemmArgs{A: A, B: B, C: C, ATrans: c.aTrans, BTrans: c.bTrans, M: c.m, N: c.n, K: c.k, LDA: lda,
		Alpha: c.alpha, Beta: c.beta, GatherAK: c.gatherAK, ScatterCN: c.scatterCN, Tile: c.tile}
	for _, l := range []struct {
		idx []uint32
		dst **gpu.IndexList
	}{{c.am, &args.GatherAM}, {c.bn, &args.GatherBN}, {c.kk, &args.GatherK}, {c.cm, &args.ScatterCM}} {
		if l.idx == nil {
			continue
		}
		list, err := testDevice.NewIndexList(l.idx, len(l.idx)+3, "indices")
		if err != nil {
			t.Fatal(err)
		}
		defer list.Buf.Release()
		if l.dst == &args.GatherBN {
			list.Max = c.bnMax
		}
		*l.dst = &list
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := gpu.Gemm(rec, args); err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	if err := rec.Submit(); err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	got := gputest.Download(t, C)

	alpha := float64(c.alpha)
	if alpha == 0 {
		alpha = 1
	}
	want := make([]float64, len(cInit))
	written := make([]bool, len(cInit))
	for m := 0; m < M; m++ {
		ar := pick(c.am, m)
		cr := pick(c.cm, m)
		for n := 0; n < N; n++ {
			bc := pick(c.bn, n)
			cc := n
			if c.scatterCN {
				cc = bc
			}
			var sum float64
			for q := 0; q < K; q++ {
				ak := q
				if c.gatherAK {
					ak = int(c.kk[q])
				}
				sum += float64(aData[ar*aCols+ak]) * bRef[pick(c.kk, q)*bN+bc]
			}
			at := cr*cCols + cc
			want[at] = alpha * sum
			if c.beta != 0 { // beta = 0 overwrites: the NaN poison must not leak in
				want[at] += float64(c.beta) * float64(cInit[at])
			}
			written[at] = true
		}
	}
	var gotW []float32
	var wantW []float64
	for i := range got {
		if written[i] {
			gotW = append(gotW, got[i])
			wantW = append(wantW, want[i])
		} else if math.Float32bits(got[i]) != math.Float32bits(cInit[i]) {
			t.Fatalf("%v: element %d outside the result changed: %v (was %v)", c, i, got[i], cInit[i])
		}
	}
	if err := gputest.RelL2(gotW, wantW); !(err < 1e-5) {
		t.Fatalf("%v: relative L2 error %g", c, err)
	}
}

func TestGemmDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	shapes := [][3]int{{1, 1, 1}, {7, 13, 5}, {129, 65, 257}, {3, 5, 4099}}
	for _, s := range shapes {
		for _, layout := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
			for _, bf16 := range []bool{false, true} {
				runGemmCase(t, rng, gemmCase{m: s[0], n: s[1], k: s[2], aTrans: layout[0], bTrans: layout[1], bf16: bf16})
			}
		}
	}
}

func TestGemmTilesAndAccumulate(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tile := range []gpu.Tile{gpu.TileSmall, gpu.TileMedium, gpu.TileLarge, gpu.TileTall8, gpu.TileTall32, gpu.TileTall64, gpu.TileWide8, gpu.TileWide32, gpu.TileWide64} {
		runGemmCase(t, rng, gemmCase{m: 131, n: 137, k: 61, bTrans: true, tile: &tile})
		runGemmCase(t, rng, gemmCase{m: 131, n: 137, k: 61, alpha: 0.5, beta: 1, tile: &tile})
	}
	runGemmCase(t, rng, gemmCase{m: 9, n: 33, k: 17, aTrans: true, alpha: -2, beta: 0.25, bf16: true})
}

// subset returns count distinct random indices below n, in random order.
func subset(rng *rand.Rand, n, count int) []uint32 {
	perm := rng.Perm(n)[:count]
	out := make([]uint32, count)
	for i, p := range perm {
		out[i] = uint32(p)
	}
	return out
}

// TestGemmThinShapes runs thin, odd shapes as LoRA (rank 8-64), the predictor
// (rank 8) and kept channels (35-64) make them, with the tile the adapter
// picks: on a CPU adapter, the thin tiles at their edges (33, 35, 63 across;
// 129 and 257 along).
func TestGemmThinShapes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, s := range [][3]int{{257, 8, 97}, {300, 7, 50}, {129, 33, 65}, {130, 35, 200}, {257, 63, 31}, {8, 257, 129}, {5, 300, 33}, {33, 129, 70}, {63, 200, 9}} {
		runGemmCase(t, rng, gemmCase{m: s[0], n: s[1], k: s[2], bTrans: true})
		runGemmCase(t, rng, gemmCase{m: s[0], n: s[1], k: s[2], aTrans: true, bf16: true, beta: 1})
	}
	// Kept channels, gathered: N = 40 of 97 output channels over 150 rows;
	// K = 45 of 101 input channels into 64 columns.
	runGemmCase(t, rng, gemmCase{m: 150, n: 97, k: 65, bTrans: true, bn: subset(rng, 97, 40), storedN: 97, scatterCN: true})
	// The same with the list's bound known (IndexList.Max): a thin tile, and
	// a bound below the count (a wrong hint) still computes every column.
	runGemmCase(t, rng, gemmCase{m: 150, n: 97, k: 65, bTrans: true, bn: subset(rng, 97, 40), storedN: 97, scatterCN: true, bnMax: 40})
	runGemmCase(t, rng, gemmCase{m: 300, n: 97, k: 33, bf16: true, bn: subset(rng, 97, 45), storedN: 97, scatterCN: true, bnMax: 8})
	runGemmCase(t, rng, gemmCase{m: 150, n: 64, k: 64, bf16: true, kk: subset(rng, 101, 45), storedK: 101, gatherAK: true})
}

// TestGemmDirectRows runs the tile whose threads own whole rows of C (BN ==
// TN), which read op(A) from the buffer instead of workgroup memory, on every
// layout and index list that reaches op(A), with rows, columns and K that
// leave remainders.
func TestGemmDirectRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	tile := gpu.TileTall8
	for _, layout := range [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}} {
		at, bt := layout[0], layout[1]
		runGemmCase(t, rng, gemmCase{m: 131, n: 7, k: 45, aTrans: at, bTrans: bt, alpha: 0.5, beta: 1, tile: &tile, aNaNPad: 3})
		runGemmCase(t, rng, gemmCase{m: 140, n: 8, k: 53, aTrans: at, bTrans: bt, bf16: true, tile: &tile,
			am: subset(rng, 301, 131), storedM: 301, cm: subset(rng, 301, 131), storedCM: 301})
		runGemmCase(t, rng, gemmCase{m: 150, n: 8, k: 70, aTrans: at, bTrans: bt, tile: &tile,
			kk: subset(rng, 101, 61), storedK: 101, gatherAK: true})
		runGemmCase(t, rng, gemmCase{m: 129, n: 5, k: 64, aTrans: at, bTrans: bt, tile: &tile,
			kk: subset(rng, 90, 37), storedK: 90})
	}
}

func TestGemmGathered(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, layout := range [][2]bool{{false, false}, {false, true}, {true, false}} {
		for _, bf16 := range []bool{false, true} {
			at, bt := layout[0], layout[1]
			// Token rows x output channels: gather A rows and B columns, scatter C rows and columns
			// (SparseLoRA's gate/up/q/k/v forward on context tokens). Bounds exceed the counts.
			runGemmCase(t, rng, gemmCase{m: 64, n: 48, k: 77, aTrans: at, bTrans: bt, bf16: bf16,
				am: subset(rng, 129, 50), storedM: 129, bn: subset(rng, 65, 40), storedN: 65,
				cm: subset(rng, 129, 50), storedCM: 129, scatterCN: true})
			// Input channels: gather K of B with A compact (down/o forward), then K of both.
			runGemmCase(t, rng, gemmCase{m: 33, n: 29, k: 128, aTrans: at, bTrans: bt, bf16: bf16,
				kk: subset(rng, 257, 100), storedK: 257})
			runGemmCase(t, rng, gemmCase{m: 33, n: 29, k: 128, aTrans: at, bTrans: bt, bf16: bf16,
				kk: subset(rng, 257, 100), storedK: 257, gatherAK: true, cm: subset(rng, 40, 33), storedCM: 40})
		}
	}
	// K > 4096 gathered, accumulating into C.
	runGemmCase(t, rng, gemmCase{m: 5, n: 7, k: 4500, bTrans: true, beta: 1,
		kk: subset(rng, 5000, 4321), storedK: 5000, gatherAK: true})
	// Empty lists: nothing is written.
	runGemmCase(t, rng, gemmCase{m: 16, n: 16, k: 8, am: []uint32{}, storedM: 20})
	runGemmCase(t, rng, gemmCase{m: 16, n: 16, k: 8, bn: []uint32{}, storedN: 20})
}

func TestGemmRejectsBadArguments(t *testing.T) {
	A := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 12), 3, 4)
	defer A.Release()
	B := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 20), 4, 5)
	defer B.Release()
	C := gputest.Poisoned(t, testDevice, 3, 5)
	defer C.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for name, g := range map[string]gpu.GemmArgs{
		"missing operand": {A: A, C: C, M: 3, N: 5, K: 4},
		"A too small":     {A: A, B: B, C: C, M: 4, N: 5, K: 4},
		"B too small":     {A: A, B: B, C: C, M: 3, N: 6, K: 4},
		"C too small":     {A: A, B: B, C: C, M: 3, N: 5, K: 4, LDC: 6},
		"bf16 A":          {A: &gpu.Tensor{Buf: A.Buf, Shape: []int{3, 4}, DType: gpu.BF16}, B: B, C: C, M: 3, N: 5, K: 4},
		"AK without K":    {A: A, B: B, C: C, M: 3, N: 5, K: 4, GatherAK: true},
		"bad tile":        {A: A, B: B, C: C, M: 3, N: 5, K: 4, Tile: &gpu.Tile{BM: 10, BN: 8, BK: 4, TM: 3, TN: 2}},
	} {
		if err := gpu.Gemm(rec, g); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("rejected calls recorded %d dispatches", rec.Dispatches)
	}
}

// TestGemmAffine checks quantized B against the float64 dequantized weight in
// the frozen-weight GEMMs: y = x W^T (B_TRANS) and dx = dy W, dense, with
// output channels gathered and with input channels (K) gathered, for both bit
// widths, every group size and scale type, on odd row counts.
func TestGemmAffine(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	// Every format (each is its own kernel, so the costlier variants rotate
	// through them to keep the test short on lavapipe).
	for i, f := range gputest.AffineFormats() {
		f := f
		in := f.Group * (2 + i%3) // the input size is a multiple of the group
		out := 37 + 2*i           // odd output sizes
		// Forward y = x W^T.
		runGemmCase(t, rng, gemmCase{m: 19, n: out, k: in, bTrans: true, affine: &f})
		if i%3 == 0 { // input gradient dx = dy W
			runGemmCase(t, rng, gemmCase{m: 13, n: in, k: out, affine: &f})
		}
		if i%5 != 0 {
			continue
		}
		// Forward with output channels gathered (rows of W), token rows gathered and scattered.
		runGemmCase(t, rng, gemmCase{m: 16, n: 24, k: in, bTrans: true, affine: &f,
			am: subset(rng, 23, 13), storedM: 23, bn: subset(rng, out, 21), storedN: out,
			cm: subset(rng, 23, 13), storedCM: 23, scatterCN: true})
		// Forward with input channels gathered (K of W and of x), accumulating.
		runGemmCase(t, rng, gemmCase{m: 11, n: out, k: in / 2, bTrans: true, affine: &f, beta: 1,
			kk: subset(rng, in, in/2-3), storedK: in, gatherAK: true})
		// dx with output channels of W gathered (K), then with input channels gathered and scattered.
		runGemmCase(t, rng, gemmCase{m: 13, n: in, k: out, affine: &f,
			kk: subset(rng, out, out-5), storedK: out, gatherAK: true})
		runGemmCase(t, rng, gemmCase{m: 13, n: in, k: out, affine: &f,
			bn: subset(rng, in, in-7), storedN: in, scatterCN: true})
	}
	// Every tile, with alpha and accumulation.
	f := gpu.Affine{Bits: 4, Group: 64, Scales: gpu.ScaleBF16}
	for _, tile := range []gpu.Tile{gpu.TileSmall, gpu.TileMedium, gpu.TileLarge,
		gpu.TileTall8, gpu.TileTall32, gpu.TileTall64, gpu.TileWide8, gpu.TileWide32, gpu.TileWide64} {
		runGemmCase(t, rng, gemmCase{m: 131, n: 67, k: 192, bTrans: true, affine: &f, tile: &tile, alpha: 0.5, beta: 1})
	}
}

// TestAffineRejectsBadInput checks the quantized weight's own checks: code and
// scale counts, formats, scales that are not exactly their storage type, and
// GEMMs that would read outside the weight or with another row length.
func TestAffineRejectsBadInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	f := gpu.Affine{Bits: 4, Group: 32, Scales: gpu.ScaleBF16}
	good := gputest.RandAffine(rng, 5, 64, f)
	for name, edit := range map[string]func(w *gpu.AffineWeight){
		"codes of the wrong width": func(w *gpu.AffineWeight) { w.Codes = w.Codes[:len(w.Codes)-1] },
		"too few scales":           func(w *gpu.AffineWeight) { w.Scales = w.Scales[1:] },
		"3 bits":                   func(w *gpu.AffineWeight) { w.Format.Bits = 3 },
		"group not dividing":       func(w *gpu.AffineWeight) { w.Format.Group = 128 },
		"scale not bf16":           func(w *gpu.AffineWeight) { w.Scales[3] = 1.0000001 },
	} {
		w := *good
		w.Codes, w.Scales = append([]uint32(nil), good.Codes...), append([]float32(nil), good.Scales...)
		edit(&w)
		if x, err := testDevice.NewAffineTensor(&w, "bad"); err == nil {
			x.Release()
			t.Errorf("%s: no error", name)
		}
	}
	B := gputest.UploadAffine(t, testDevice, good)
	defer B.Release()
	A := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 6*64), 6, 64)
	defer A.Release()
	C := gputest.Poisoned(t, testDevice, 6, 64)
	defer C.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	for name, g := range map[string]gpu.GemmArgs{
		"N beyond the rows":    {A: A, B: B, C: C, BTrans: true, M: 6, N: 6, K: 64},
		"K beyond the inputs":  {A: A, B: B, C: C, BTrans: true, M: 1, N: 5, K: 65, LDA: 64},
		"another row length":   {A: A, B: B, C: C, BTrans: true, M: 6, N: 5, K: 32, LDB: 32},
		"dx K beyond the rows": {A: A, B: B, C: C, M: 6, N: 64, K: 6, LDA: 64},
		"quantized A not B":    {A: B, B: A, C: C, M: 5, N: 6, K: 6},
	} {
		if err := gpu.Gemm(rec, g); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if rec.Dispatches != 0 {
		t.Errorf("rejected calls recorded %d dispatches", rec.Dispatches)
	}
	if err := B.Upload(make([]float32, 5*64)); err == nil {
		t.Error("float upload into a quantized tensor: no error")
	}
}
