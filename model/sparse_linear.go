package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// The row- and channel-selective forms of a frozen projection (SPEC section
// 4.5), which every pass of the decoder runs through: they run on the token
// rows of a RowSet (a list: context, scored or real tokens; or the first Count
// rows) and, where a channel list is given, on those channels only. A nil
// channel list means all channels; then a weight too large for one binding is
// multiplied in row blocks. Rows of the output that the row set does not name
// are untouched.

// checkSparse reports whether a channel list can be used: the kept channels
// index the whole weight, which must be bound at once.
func (l *Linear) checkSparse(keep *gpu.IndexList) error {
	if keep != nil && l.BlockRows < l.Out {
		return fmt.Errorf("linear [%d, %d]: channel-gathered GEMMs need the whole weight in one binding (%d rows fit)", l.Out, l.In, l.BlockRows)
	}
	return nil
}

// outputColumns is the view of output columns [c0, c0+n) of y [.., l.Out]
// over the rows a GEMM may write: the first Count rows, or every row of y for
// a scattered row list.
func (l *Linear) outputColumns(y *gpu.Tensor, rows RowSet, c0, n int) *gpu.Tensor {
	r := rows.Count
	if rows.Gathered() {
		r = y.Len() / l.Out
	}
	return columns(y, r, l.Out, c0, n)
}

// ForwardKeepOutputs records y[rows, keep] (+)= x[rows] W[keep]^T for output
// channel list keep (gate, up, q, k, v); other entries of y are untouched. No
// bias: the caller adds it on every channel.
func (l *Linear) ForwardKeepOutputs(rec *gpu.Recorder, x, y *gpu.Tensor, rows RowSet, keep *gpu.IndexList, accumulate bool) error {
	if err := l.checkSparse(keep); err != nil {
		return err
	}
	if keep != nil {
		return gpu.Gemm(rec, gpu.GemmArgs{A: x, B: l.W, C: y, BTrans: true, M: rows.Count, N: l.Out, K: l.In,
			GatherAM: rows.List, ScatterCM: rows.List, GatherBN: keep, ScatterCN: true, Beta: beta(accumulate)})
	}
	for r0 := 0; r0 < l.Out; r0 += l.BlockRows {
		n := min(l.BlockRows, l.Out-r0)
		err := gpu.Gemm(rec, gpu.GemmArgs{A: x, B: l.rowBlock(r0, n), C: l.outputColumns(y, rows, r0, n),
			BTrans: true, M: rows.Count, N: n, K: l.In, LDA: l.In, LDB: l.In, LDC: l.Out, Beta: beta(accumulate),
			GatherAM: rows.List, ScatterCM: rows.List})
		if err != nil {
			return fmt.Errorf("linear [%d, %d] forward: %w", l.Out, l.In, err)
		}
	}
	return nil
}

// ForwardKeepInputs records y[rows] (+)= x[rows, keep] W[:, keep]^T for input
// channel list keep (down, o).
func (l *Linear) ForwardKeepInputs(rec *gpu.Recorder, x, y *gpu.Tensor, rows RowSet, keep *gpu.IndexList, accumulate bool) error {
	if keep == nil {
		return l.ForwardKeepOutputs(rec, x, y, rows, nil, accumulate)
	}
	if err := l.checkSparse(keep); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: x, B: l.W, C: y, BTrans: true, M: rows.Count, N: l.Out, K: l.In,
		GatherAM: rows.List, ScatterCM: rows.List, GatherK: keep, GatherAK: true, Beta: beta(accumulate)})
}

// BackwardKeptOutputs records dx[rows] (+)= dy[rows, keep] W[keep, :]: the input
// gradient of a projection whose forward computed only the kept outputs.
func (l *Linear) BackwardKeptOutputs(rec *gpu.Recorder, dy, dx *gpu.Tensor, rows RowSet, keep *gpu.IndexList, accumulate bool) error {
	if err := l.checkSparse(keep); err != nil {
		return err
	}
	if keep != nil {
		return gpu.Gemm(rec, gpu.GemmArgs{A: dy, B: l.W, C: dx, M: rows.Count, N: l.In, K: l.Out,
			GatherAM: rows.List, ScatterCM: rows.List, GatherK: keep, GatherAK: true, Beta: beta(accumulate)})
	}
	dyRows := rows.Count
	if rows.Gathered() {
		dyRows = dy.Len() / l.Out
	}
	for r0 := 0; r0 < l.Out; r0 += l.BlockRows {
		n := min(l.BlockRows, l.Out-r0)
		err := gpu.Gemm(rec, gpu.GemmArgs{A: columns(dy, dyRows, l.Out, r0, n), B: l.rowBlock(r0, n), C: dx,
			M: rows.Count, N: l.In, K: n, LDA: l.Out, LDB: l.In, LDC: l.In, Beta: beta(accumulate || r0 > 0),
			GatherAM: rows.List, ScatterCM: rows.List})
		if err != nil {
			return fmt.Errorf("linear [%d, %d] backward: %w", l.Out, l.In, err)
		}
	}
	return nil
}

// BackwardKeptInputs records dx[rows, keep] = dy[rows] W[:, keep]: the input
// gradient of a projection whose forward read only the kept inputs. The other
// entries of dx are untouched (the caller clears them).
func (l *Linear) BackwardKeptInputs(rec *gpu.Recorder, dy, dx *gpu.Tensor, rows RowSet, keep *gpu.IndexList) error {
	if keep == nil {
		return l.BackwardKeptOutputs(rec, dy, dx, rows, nil, false)
	}
	if err := l.checkSparse(keep); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: dy, B: l.W, C: dx, M: rows.Count, N: l.In, K: l.Out,
		GatherAM: rows.List, ScatterCM: rows.List, GatherBN: keep, ScatterCN: true})
}
