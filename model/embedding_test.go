package model

import (
	"math"
	"math/rand/v2"
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
