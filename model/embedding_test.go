package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// uploadIDs stores token ids as raw u32 bits in an f32-typed tensor, as
// EmbeddingForward reads them.
func uploadIDs(t *testing.T, ids []uint32) *gpu.Tensor {
	t.Helper()
	tensor, err := testDevice.NewTensor(gpu.F32, "token ids", len(ids))
	if err != nil {
		t.Fatal(err)
	}
	if err := tensor.Buf.Write(tensor.Offset, gpu.U32Bytes(ids)); err != nil {
		t.Fatal(err)
	}
	return tensor
}

// referenceEmbedding gathers table rows, with zeros for ids >= vocab.
func referenceEmbedding(table []float32, ids []uint32, vocab, cols int) []float64 {
	x := make([]float64, len(ids)*cols)
	for t, id := range ids {
		if int64(id) >= int64(vocab) {
			continue
		}
		for c := range cols {
			x[t*cols+c] = float64(table[int(id)*cols+c])
		}
	}
	return x
}

func TestEmbedding(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	align := uint64(max(testDevice.Limits.MinStorageBufferOffsetAlignment, 4))
	cases := []struct {
		vocab, cols, tokens int
		gridLimit           uint32
		// blockRows > 0 lowers the binding limit so that the table is bound
		// in blocks of about that many rows.
		blockRows int
	}{
		{1, 1, 1, 0, 0},
		{37, 13, 29, 0, 0},
		{50, 65, 129, 0, 0},
		{5, 5000, 3, 0, 0},
		{37, 13, 40, 2, 0}, // 2-D grid
		{37, 13, 29, 0, 6}, // several blocks, the last one partial
		{40, 7, 33, 3, 8},  // blocks and a 2-D grid
	}
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		for _, c := range cases {
			table := gputest.RandFloats(rng, c.vocab*c.cols)
			ids := make([]uint32, c.tokens)
			for i := range ids {
				ids[i] = uint32(rng.IntN(c.vocab))
			}
			// Out-of-range ids, which must read nothing and give zeros.
			for i, bad := range []uint32{uint32(c.vocab), uint32(c.vocab) + 5, math.MaxUint32} {
				if j := 3*i + 1; j < len(ids) {
					ids[j] = bad
				}
			}
			tableT := gputest.Upload(t, testDevice, dtype, table, c.vocab, c.cols)
			idsT := uploadIDs(t, ids)
			x := gputest.Poisoned(t, testDevice, c.tokens, c.cols)
			var bindingLimit uint64
			if c.blockRows > 0 {
				bindingLimit = align + dtype.Bytes(c.blockRows*c.cols)
			}
			rec := testDevice.NewRecorder()
			dispatches := 0
			rec.Log = func(gpu.Dispatch) { dispatches++ }
			if err := embeddingForward(rec, tableT, idsT, x, c.tokens, c.cols, c.gridLimit, bindingLimit); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			want := referenceEmbedding(storedAs(dtype, table), ids, c.vocab, c.cols)
			if e := gputest.RelL2(gputest.Download(t, x), want); e != 0 {
				t.Errorf("%s table %dx%d, %d tokens (grid limit %d, %d dispatches): gathered rows differ, relative L2 error %g",
					dtype, c.vocab, c.cols, c.tokens, c.gridLimit, dispatches, e)
			}
			if c.blockRows > 0 && dispatches < 2 {
				t.Errorf("%s table %dx%d with blocks of %d rows: %d dispatch(es), want one per block", dtype, c.vocab, c.cols, c.blockRows, dispatches)
			}
			rec.Release()
			for _, tensor := range []*gpu.Tensor{tableT, idsT, x} {
				tensor.Release()
			}
		}
	}
}

func TestEmbeddingErrors(t *testing.T) {
	table := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10*4), 10, 4)
	defer table.Release()
	flat := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 10*4), 40)
	defer flat.Release()
	ids := uploadIDs(t, make([]uint32, 3))
	defer ids.Release()
	x := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 3*4), 3, 4)
	defer x.Release()
	idsInTable := &gpu.Tensor{Buf: table.Buf, Shape: []int{3}, DType: gpu.F32}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nil recorder", EmbeddingForward(nil, table, ids, x, 3, 4), "nil recorder"},
		{"flat table", EmbeddingForward(rec, flat, ids, x, 3, 4), "want [vocab, 4]"},
		{"column mismatch", EmbeddingForward(rec, table, ids, x, 4, 3), "want [vocab, 3]"},
		{"short ids", EmbeddingForward(rec, table, ids, x, 4, 4), "ids has shape [3]"},
		{"ids in the table's buffer", EmbeddingForward(rec, table, idsInTable, x, 3, 4), "read-only"},
	}
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

// TestEmbeddingAffine checks the lookup through a quantized table (MLX's
// quantized embedding) against the float64 dequantized rows, for every bit
// width and group size, each scale type, in one binding and in blocks of rows,
// with out-of-range ids that must give zeros.
func TestEmbeddingAffine(t *testing.T) {
	rng := rand.New(rand.NewPCG(35, 36))
	align := uint64(max(testDevice.Limits.MinStorageBufferOffsetAlignment, 4))
	for i, f := range gputest.AffineFormats() {
		if (i/3+i)%3 != 0 { // each kernel compiles on its own: every (bits, group) pair, each scale type twice
			continue
		}
		vocab, cols, tokens, blockRows := 37+i, f.Group*(1+i%2), 29, []int{0, 6}[i%2]
		aw := gputest.RandAffine(rng, vocab, cols, f)
		table := gputest.DequantizeF64(aw)
		ids := make([]uint32, tokens)
		for j := range ids {
			ids[j] = uint32(rng.IntN(vocab))
		}
		ids[1], ids[4] = uint32(vocab), math.MaxUint32
		tableT := gputest.UploadAffine(t, testDevice, aw)
		idsT := uploadIDs(t, ids)
		x := gputest.Poisoned(t, testDevice, tokens, cols)
		var bindingLimit uint64
		if blockRows > 0 {
			bindingLimit = align + uint64(4*blockRows*f.RowWords(cols))
		}
		rec := testDevice.NewRecorder()
		dispatches := 0
		rec.Log = func(gpu.Dispatch) { dispatches++ }
		if err := embeddingForward(rec, tableT, idsT, x, tokens, cols, 0, bindingLimit); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		want := make([]float64, tokens*cols)
		for tok, id := range ids {
			if int(id) < vocab && id != math.MaxUint32 {
				copy(want[tok*cols:(tok+1)*cols], table[int(id)*cols:])
			}
		}
		if e := gputest.RelL2(gputest.Download(t, x), want); !(e < 1e-7) {
			t.Errorf("%s table %dx%d, blocks of %d rows (%d dispatches): relative L2 error %g", f, vocab, cols, blockRows, dispatches, e)
		}
		if blockRows > 0 && dispatches < 2 {
			t.Errorf("%s: %d dispatch(es) with blocks of %d rows, want one per block", f, dispatches, blockRows)
		}
		rec.Release()
		for _, tensor := range []*gpu.Tensor{tableT, idsT, x} {
			tensor.Release()
		}
	}
}

// TestHostEmbeddingMatchesKernel checks that the host table's Lookup gives,
// bit for bit, the rows EmbeddingForward gathers from the same table on the
// GPU: f32, bf16 and quantized tables (every bit width and group size, each
// scale type), including f32-scaled groups whose s*q falls exactly halfway
// between two float32 values with a tiny bias (the fused multiply-add's
// single rounding decides those). Ids repeat and cover the first and last
// rows; an id outside the vocabulary is an error on the host.
func TestHostEmbeddingMatchesKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(41, 42))
	type table struct {
		name       string
		affine     *gpu.AffineWeight
		values     []float32
		dtype      gpu.DType
		vocab, col int
	}
	var tables []table
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		tables = append(tables, table{name: dtype.String(), values: gputest.RandFloats(rng, 23*37), dtype: dtype, vocab: 23, col: 37})
	}
	for i, f := range gputest.AffineFormats() {
		if (i/3+i)%3 != 0 { // the formats TestEmbeddingAffine compiles
			continue
		}
		vocab, cols := 19+i, f.Group*(1+i%2)
		w := gputest.RandAffine(rng, vocab, cols, f)
		if f.Scales == gpu.ScaleF32 {
			// Row 0: s = ±(1 + 2^-23) times odd codes lands halfway; b = ±2^-60.
			for g := range cols / f.Group {
				w.Scales[g] = float32(1-2*(g%2)) * math.Nextafter32(1, 2)
				w.Biases[g] = float32(1-2*(g/2%2)) * 0x1p-60
			}
		}
		tables = append(tables, table{name: f.String(), affine: w, dtype: gpu.Quantized, vocab: vocab, col: cols})
	}
	for _, tb := range tables {
		ids := make([]uint32, 31)
		for i := range ids {
			ids[i] = uint32(rng.IntN(tb.vocab))
		}
		ids[0], ids[1], ids[2] = 0, uint32(tb.vocab-1), 0
		host, err := newEmbedding(testDevice, tb.affine, tb.values, tb.vocab, tb.col, tb.dtype)
		if err != nil {
			t.Fatal(err)
		}
		if host.DType() != tb.dtype {
			t.Errorf("%s: host table of dtype %s", tb.name, host.DType())
		}
		got := make([]float32, len(ids)*tb.col)
		if err := host.Lookup(ids, got); err != nil {
			t.Fatal(err)
		}
		var tableT *gpu.Tensor
		if tb.affine != nil {
			tableT = gputest.UploadAffine(t, testDevice, tb.affine)
		} else {
			tableT = gputest.Upload(t, testDevice, tb.dtype, tb.values, tb.vocab, tb.col)
		}
		idsT := uploadIDs(t, ids)
		x := gputest.Poisoned(t, testDevice, len(ids), tb.col)
		rec := testDevice.NewRecorder()
		if err := EmbeddingForward(rec, tableT, idsT, x, len(ids), tb.col); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		want := gputest.Download(t, x)
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Errorf("%s: token %d (id %d) column %d: host %g, GPU %g", tb.name, i/tb.col, ids[i/tb.col], i%tb.col, got[i], want[i])
				break
			}
		}
		dq := host.Dequantized()
		again := make([]float32, len(got))
		if err := dq.Lookup(ids, again); err != nil || dq.DType() != gpu.F32 || !slices.Equal(again, got) {
			t.Errorf("%s: the dequantized twin (%s) looks up other rows (error %v)", tb.name, dq.DType(), err)
		}
		if err := host.Lookup([]uint32{0, uint32(tb.vocab)}, make([]float32, 2*tb.col)); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
			t.Errorf("%s: id %d: error %v, want one naming the vocabulary", tb.name, tb.vocab, err)
		}
		rec.Release()
		for _, tensor := range []*gpu.Tensor{tableT, idsT, x} {
			tensor.Release()
		}
	}
}
