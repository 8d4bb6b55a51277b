package gpu

import (
	"errors"
	"fmt"
	"math"
)

// IndexList is a list of u32 indices in a GPU buffer, stored as
// [count, i0, i1, ...] starting at element Offset. Kernels read the count on the
// GPU, so lists produced by GPU kernels (e.g. a top-k selection) are used
// without a host round trip.
type IndexList struct {
	Buf    *Buffer
	Offset int // in u32 elements
	// Max, when > 0, is the most entries the list will hold (the kept
	// channels of a sparsity ratio). A GEMM gathering columns by the list
	// picks its tile for this many rather than for its N bound; its grid and
	// results still follow the count on the GPU, so Max changes speed only.
	Max int
}

// NewIndexList uploads indices as a list with room for capacity entries.
func (d *Device) NewIndexList(indices []uint32, capacity int, label string) (IndexList, error) {
	if capacity < len(indices) {
		capacity = len(indices)
	}
	buf, err := d.NewBuffer(uint64(4*(capacity+1)), label)
	if err != nil {
		return IndexList{}, err
	}
	data := append([]uint32{uint32(len(indices))}, indices...)
	if err := buf.Write(0, U32Bytes(data)); err != nil {
		buf.Release()
		return IndexList{}, err
	}
	return IndexList{Buf: buf}, nil
}

// Tile is a GEMM tiling: a workgroup computes BM x BN outputs, each thread TM x
// TN of them, stepping K by BK.
type Tile struct{ BM, BN, BK, TM, TN int }

// Tiles offered to callers and the benchmark; the first that fits is the default
// for large problems.
var (
	TileLarge  = Tile{BM: 128, BN: 128, BK: 8, TM: 8, TN: 8}
	TileMedium = Tile{BM: 64, BN: 64, BK: 16, TM: 4, TN: 4}
	TileSmall  = Tile{BM: 32, BN: 32, BK: 16, TM: 2, TN: 2}
	// Thin tiles, for a C with one side of at most 64 (LoRA ranks, the
	// predictor's rank 8, SparseLoRA's kept channels) and the other long:
	// few threads (8-64) that each own 16 x 8 outputs (8 x 16 for the wide
	// ones), so that a thread loads 0.19 operands from workgroup memory per
	// multiply-add, and a side of 8 is not padded to 32. On lavapipe, threads
	// owning 8 x 2 to 8 x 8 outputs (0.63-0.25 loads per multiply-add, an
	// earlier choice) ran these products 1.3-3x slower; 16 x 16 (256
	// accumulators, more than it keeps in registers) 3-5x slower. The rank-8
	// tile's threads own whole rows of C, so they read op(A) from the buffer
	// without staging it (shaders/gemm.wgsl, A_DIRECT): 1.7x faster again.
	// The long side is 64 or 128 so that a few hundred token rows still make
	// several workgroups for the CPU's cores.
	TileTall8  = Tile{BM: 128, BN: 8, BK: 8, TM: 16, TN: 8}
	TileTall32 = Tile{BM: 64, BN: 32, BK: 16, TM: 16, TN: 8}
	TileTall64 = Tile{BM: 64, BN: 64, BK: 16, TM: 16, TN: 8}
	TileWide8  = Tile{BM: 8, BN: 128, BK: 16, TM: 8, TN: 16}
	TileWide32 = Tile{BM: 32, BN: 128, BK: 16, TM: 8, TN: 16}
	TileWide64 = Tile{BM: 64, BN: 128, BK: 16, TM: 8, TN: 16}
)

func (t Tile) String() string { return fmt.Sprintf("%dx%dx%d/%dx%d", t.BM, t.BN, t.BK, t.TM, t.TN) }

func (t Tile) valid(lim Limits) error {
	if t.BM <= 0 || t.BN <= 0 || t.BK <= 0 || t.TM <= 0 || t.TN <= 0 || t.BM%t.TM != 0 || t.BN%t.TN != 0 {
		return fmt.Errorf("invalid GEMM tile %s", t)
	}
	threads := (t.BM / t.TM) * (t.BN / t.TN)
	if uint32(threads) > lim.MaxComputeInvocationsPerWorkgroup {
		return fmt.Errorf("GEMM tile %s needs %d threads, the adapter allows %d", t, threads, lim.MaxComputeInvocationsPerWorkgroup)
	}
	if uint32(4*t.BK*(t.BM+t.BN)+16) > lim.MaxComputeWorkgroupStorageSize {
		return fmt.Errorf("GEMM tile %s needs more workgroup memory than the adapter's %d bytes", t, lim.MaxComputeWorkgroupStorageSize)
	}
	return nil
}

// autoTile picks a tile from the problem's size (its upper bounds for gathered
// problems). A CPU adapter (lavapipe) also takes the large tile for smaller
// problems whose sizes it covers with little padding: its workgroups run a few
// at a time on the cores, so the larger tile's reuse pays even where it would
// leave most of a GPU idle (measured on a sparse step's gathered GEMMs: 57 %
// of the dense rate with the medium tile, 94 % with the large one), while
// rows the tile pads over are work thrown away.
//
// A CPU adapter also takes a thin tile (128 or 256 long, 8, 32 or 64 across) for a C
// with one side of at most 64 and the other of at least 128: the small and
// medium square tiles that such sizes got ran LoRA's and the predictor's
// products and the kept-channel GEMMs at 25-60 % of the dense rate. GPUs keep
// the square tiles, whose more numerous workgroups fill their cores.
func autoTile(m, n int, cpu bool) Tile {
	switch {
	case m >= 512 && n >= 512:
		return TileLarge
	case cpu && m >= 128 && n >= 128 && 8*paddedArea(m, n, 128) <= 9*paddedArea(m, n, 64):
		return TileLarge
	case cpu && n <= 8 && m >= 128:
		return TileTall8
	case cpu && n <= 32 && m >= 128:
		return TileTall32
	case cpu && n <= 64 && m >= 128:
		return TileTall64
	case cpu && m <= 8 && n >= 128:
		return TileWide8
	case cpu && m <= 32 && n >= 128:
		return TileWide32
	case cpu && m <= 64 && n >= 128:
		return TileWide64
	case m >= 48 && n >= 48:
		return TileMedium
	}
	return TileSmall
}

// paddedArea is the output area that tiles of side t compute for an m x n C.
func paddedArea(m, n, t int) int { return (m + t - 1) / t * t * ((n + t - 1) / t * t) }

// GemmArgs describe C = Alpha * op(A) op(B) + Beta * C (see shaders/gemm.wgsl).
//
// A, B and C are 2-D views (a tensor's last dimension is its row length, which is
// the leading dimension unless LDA/LDB/LDC say otherwise). B may be BF16, or
// Quantized: a weight [out, in] whose leading dimension is its row length
// (LDB 0 or in; B_TRANS reads it as W^T, for y = x W^T). M, N, K
// are the logical sizes; when an index list replaces a size, they are its upper
// bound (the grid is sized for them) and the real count is read on the GPU.
type GemmArgs struct {
	A, B, C        *Tensor
	ATrans, BTrans bool
	M, N, K        int
	LDA, LDB, LDC  int
	// Alpha scales the product; the zero value means 1.
	Alpha float32
	// Beta scales the old C; 0 overwrites C without reading it.
	Beta float32

	GatherAM  *IndexList // rows of op(A)
	GatherBN  *IndexList // columns of op(B)
	GatherK   *IndexList // the K index of B (and of A when GatherAK)
	GatherAK  bool
	ScatterCM *IndexList // rows of C
	ScatterCN bool       // columns of C follow GatherBN

	// Tile overrides the automatic choice.
	Tile *Tile
}

// FLOPs is the multiply-add count times two for the given sizes.
func GemmFLOPs(m, n, k int) float64 { return 2 * float64(m) * float64(n) * float64(k) }

func lastDim(t *Tensor) int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[len(t.Shape)-1]
}

// checkExtent verifies that a stored rows x cols matrix with leading dimension ld
// fits in the tensor, for the axes not replaced by index lists.
func checkExtent(name string, t *Tensor, rows, cols, ld int) error {
	if rows == 0 || cols == 0 {
		return nil
	}
	if cols > ld {
		return fmt.Errorf("gemm: %s rows hold %d elements but the leading dimension is %d", name, cols, ld)
	}
	need := (rows-1)*ld + cols
	if need > t.Len() {
		return fmt.Errorf("gemm: %s needs %d elements (%d x %d, ld %d) but its shape %v holds %d", name, need, rows, cols, ld, t.Shape, t.Len())
	}
	return nil
}

// affineExtent checks a quantized B: the stored rows x columns that the
// GEMM's dense axes read (rows = n, columns = k when trans; a gathered axis
// counts 1) lie inside the weight, and ld is its row length. It returns the
// kernel's leading dimension (the row's words) and the offset of a row's
// scales.
func affineExtent(t *Tensor, ld int, trans bool, k, n int) (ldb int, scaleOff uint32, err error) {
	if err := t.checkAffine(); err != nil {
		return 0, 0, fmt.Errorf("gemm: B: %w", err)
	}
	rows, cols := k, n
	if trans {
		rows, cols = n, k
	}
	out, in := t.Shape[0], t.Shape[1]
	if ld != 0 && ld != in {
		return 0, 0, fmt.Errorf("gemm: quantized B [%d, %d] has leading dimension %d, not its row length", out, in, ld)
	}
	if rows > out || cols > in {
		return 0, 0, fmt.Errorf("gemm: quantized B needs %d x %d elements but is [%d, %d]", rows, cols, out, in)
	}
	return t.Affine.RowWords(in), uint32(t.Affine.CodeWords(in)), nil
}

// Gemm records the GEMM into rec.
func Gemm(rec *Recorder, g GemmArgs) error {
	d := rec.dev
	if g.A == nil || g.B == nil || g.C == nil {
		return errors.New("gemm: A, B and C are required")
	}
	if g.A.DType != F32 || g.C.DType != F32 {
		return errors.New("gemm: A and C must be f32 (B may be bf16 or quantized)")
	}
	if g.M < 0 || g.N < 0 || g.K < 0 {
		return fmt.Errorf("gemm: negative size %dx%dx%d", g.M, g.N, g.K)
	}
	if g.GatherAK && g.GatherK == nil {
		return errors.New("gemm: GatherAK needs GatherK")
	}
	if g.ScatterCN && g.GatherBN == nil {
		return errors.New("gemm: ScatterCN needs GatherBN")
	}
	if g.M == 0 || g.N == 0 {
		return nil
	}
	lda, ldb, ldc := g.LDA, g.LDB, g.LDC
	if lda == 0 {
		lda = lastDim(g.A)
	}
	if ldb == 0 {
		ldb = lastDim(g.B)
	}
	if ldc == 0 {
		ldc = lastDim(g.C)
	}
	// Dense extents; gathered axes are bounds-checked by the GPU's robust access.
	am, ak := g.M, g.K
	if g.GatherAM != nil {
		am = 1
	}
	if g.GatherK != nil { // A's K extent is the list's count (compact) or gathered
		ak = 1
	}
	bk, bn := g.K, g.N
	if g.GatherK != nil {
		bk = 1
	}
	if g.GatherBN != nil {
		bn = 1
	}
	cm, cn := g.M, g.N
	if g.ScatterCM != nil {
		cm = 1
	}
	if g.ScatterCN {
		cn = 1
	}
	var errs []error
	if g.ATrans {
		errs = append(errs, checkExtent("A", g.A, ak, am, lda))
	} else {
		errs = append(errs, checkExtent("A", g.A, am, ak, lda))
	}
	var affineScaleOff uint32
	switch {
	case g.B.DType == Quantized:
		var err error
		if ldb, affineScaleOff, err = affineExtent(g.B, g.LDB, g.BTrans, bk, bn); err != nil {
			errs = append(errs, err)
		}
	case g.BTrans:
		errs = append(errs, checkExtent("B", g.B, bn, bk, ldb))
	default:
		errs = append(errs, checkExtent("B", g.B, bk, bn, ldb))
	}
	errs = append(errs, checkExtent("C", g.C, cm, cn, ldc))
	if err := errors.Join(errs...); err != nil {
		return err
	}

	tileN := g.N
	if g.GatherBN != nil && g.GatherBN.Max > 0 {
		tileN = min(tileN, g.GatherBN.Max)
	}
	tile := autoTile(g.M, tileN, d.Info.Type == AdapterTypeCPU)
	if g.Tile != nil {
		tile = *g.Tile
	}
	if err := tile.valid(d.Limits); err != nil {
		return err
	}
	k, err := d.Kernel("gemm.wgsl", append([]Const{
		U32("BM", tile.BM), U32("BN", tile.BN), U32("BK", tile.BK), U32("TM", tile.TM), U32("TN", tile.TN),
		Bool("A_TRANS", g.ATrans), Bool("B_TRANS", g.BTrans), Bool("B_BF16", g.B.DType == BF16),
		Bool("GATHER_AM", g.GatherAM != nil), Bool("GATHER_BN", g.GatherBN != nil),
		Bool("GATHER_K", g.GatherK != nil), Bool("GATHER_AK", g.GatherAK),
		Bool("SCATTER_CM", g.ScatterCM != nil), Bool("SCATTER_CN", g.ScatterCN)},
		affineConsts("B_AFFINE", g.B.Affine)...)...)
	if err != nil {
		return err
	}
	if g.A.Offset%4 != 0 || g.B.Offset%4 != 0 || g.C.Offset%4 != 0 {
		return errors.New("gemm: tensor offsets must be multiples of 4 bytes")
	}
	viewA, offA := g.A.View()
	viewB, offB := g.B.View()
	viewC, offC := g.C.View()
	alpha := g.Alpha
	if alpha == 0 {
		alpha = 1
	}
	placeholder, err := d.Placeholder()
	if err != nil {
		return err
	}
	list := func(l *IndexList) (Binding, uint32) {
		if l == nil {
			return Bind(placeholder), 0
		}
		return Bind(l.Buf), uint32(l.Offset)
	}
	bm, om := list(g.GatherAM)
	bnl, on := list(g.GatherBN)
	bkl, ok := list(g.GatherK)
	bc, oc := list(g.ScatterCM)

	params := PackParams(
		uint32(g.M), uint32(g.N), uint32(g.K), uint32(lda),
		uint32(ldb), uint32(ldc), uint32(offA), uint32(offB),
		uint32(offC), math.Float32bits(alpha), math.Float32bits(g.Beta), om,
		on, ok, oc, affineScaleOff,
	)
	bindings := []Binding{viewA, viewB, viewC, bm, bnl, bkl, bc}
	work := &GemmWork{M: g.M, N: g.N, K: g.K, Rows: g.GatherAM, Cols: g.GatherBN, Inner: g.GatherK}
	if work.Rows == nil {
		work.Rows = g.ScatterCM
	}
	defer func() { rec.gemm = nil }()
	if g.GatherAM == nil && g.ScatterCM == nil && g.GatherBN == nil {
		rec.gemm = work
		gx := uint32((g.N + tile.BN - 1) / tile.BN)
		gy := uint32((g.M + tile.BM - 1) / tile.BM)
		return rec.Dispatch(gemmKind(work), k, params, bindings, gx, gy, 1)
	}
	// M or N is only known on the GPU: size the grid there.
	rows, offRows := bm, om
	if g.GatherAM == nil {
		rows, offRows = bc, oc
	}
	grid, err := gemmGrid(rec, g.M, g.N, tile, rows, offRows, g.GatherAM != nil || g.ScatterCM != nil, bnl, on, g.GatherBN != nil)
	if err != nil {
		return err
	}
	rec.gemm = work
	return rec.DispatchIndirect(gemmKind(work), k, params, bindings, grid)
}

// GemmWork describes a recorded GEMM's size: M x N x K, where an index list
// replaces a size its count (read on the GPU, at most the bound) is the real
// one. Rows is the list of op(A)'s or C's rows, Cols of op(B)'s columns, Inner
// of the K index.
type GemmWork struct {
	M, N, K           int
	Rows, Cols, Inner *IndexList
}

// gemmGrid records the kernel that writes a gathered GEMM's workgroup grid into
// the recorder's scratch space and returns where it is.
func gemmGrid(rec *Recorder, m, n int, tile Tile, rows Binding, offRows uint32, rowsFromList bool,
	cols Binding, offCols uint32, colsFromList bool) (Binding, error) {
	k, err := rec.dev.Kernel("gemm_grid.wgsl", Bool("ROWS_FROM_LIST", rowsFromList), Bool("COLS_FROM_LIST", colsFromList))
	if err != nil {
		return Binding{}, err
	}
	grid, err := rec.scratch(12)
	if err != nil {
		return Binding{}, err
	}
	params := PackParams(uint32(m), uint32(n), uint32(tile.BM), uint32(tile.BN), offRows, offCols, uint32(grid.Offset/4), 0)
	if err := rec.Dispatch(KindGemmGrid, k, params, []Binding{rows, cols, Bind(grid.Buffer)}, 1, 1, 1); err != nil {
		return Binding{}, err
	}
	return grid, nil
}

// Placeholder is a small buffer, never written, bound to the kernel bindings
// that a kernel variant does not use (a layout needs every binding filled, and
// repeating another operand's buffer would alias a writable binding). The
// device owns it.
func (d *Device) Placeholder() (*Buffer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.unused == nil {
		b, err := d.NewBuffer(16, "unused binding")
		if err != nil {
			return nil, err
		}
		d.unused = b
	}
	return d.unused, nil
}
