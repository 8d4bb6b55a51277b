package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// The sparse forms of a frozen projection (SPEC section 4.5): they run on the
// token rows of an index list and, where a channel list is given, on those
// channels only. A nil channel list means all channels. rowBound is the
// largest number of rows the row list can hold (the GEMM grid is sized on the
// GPU from the real count, but never beyond it).

func (l *Linear) checkSparse() error {
	if l.BlockRows < l.Out {
		return fmt.Errorf("linear [%d, %d]: sparse GEMMs need the whole weight in one binding (%d rows fit)", l.Out, l.In, l.BlockRows)
	}
	return nil
}

// ForwardKeepOutputs records y[rows, keep] = x[rows] W[keep]^T for output
// channel list keep (gate, up, q, k, v); other entries of y are untouched.
func (l *Linear) ForwardKeepOutputs(rec *gpu.Recorder, x, y *gpu.Tensor, rows gpu.IndexList, rowBound int, keep *gpu.IndexList) error {
	if err := l.checkSparse(); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: x, B: l.W, C: y, BTrans: true, M: rowBound, N: l.Out, K: l.In,
		GatherAM: &rows, ScatterCM: &rows, GatherBN: keep, ScatterCN: keep != nil})
}

// ForwardKeepInputs records y[rows] (+)= x[rows, keep] W[:, keep]^T for input
// channel list keep (down, o).
func (l *Linear) ForwardKeepInputs(rec *gpu.Recorder, x, y *gpu.Tensor, rows gpu.IndexList, rowBound int, keep *gpu.IndexList, accumulate bool) error {
	if err := l.checkSparse(); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: x, B: l.W, C: y, BTrans: true, M: rowBound, N: l.Out, K: l.In,
		GatherAM: &rows, ScatterCM: &rows, GatherK: keep, GatherAK: keep != nil, Beta: beta(accumulate)})
}

// BackwardKeptOutputs records dx[rows] (+)= dy[rows, keep] W[keep, :]: the input
// gradient of a projection whose forward computed only the kept outputs.
func (l *Linear) BackwardKeptOutputs(rec *gpu.Recorder, dy, dx *gpu.Tensor, rows gpu.IndexList, rowBound int, keep *gpu.IndexList, accumulate bool) error {
	if err := l.checkSparse(); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: dy, B: l.W, C: dx, M: rowBound, N: l.In, K: l.Out,
		GatherAM: &rows, ScatterCM: &rows, GatherK: keep, GatherAK: keep != nil, Beta: beta(accumulate)})
}

// BackwardKeptInputs records dx[rows, keep] = dy[rows] W[:, keep]: the input
// gradient of a projection whose forward read only the kept inputs. The other
// entries of dx are untouched (the caller clears them).
func (l *Linear) BackwardKeptInputs(rec *gpu.Recorder, dy, dx *gpu.Tensor, rows gpu.IndexList, rowBound int, keep *gpu.IndexList) error {
	if err := l.checkSparse(); err != nil {
		return err
	}
	return gpu.Gemm(rec, gpu.GemmArgs{A: dy, B: l.W, C: dx, M: rowBound, N: l.In, K: l.Out,
		GatherAM: &rows, ScatterCM: &rows, GatherBN: keep, ScatterCN: keep != nil})
}
