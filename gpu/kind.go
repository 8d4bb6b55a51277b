package gpu

import "fmt"

// Kind says what a dispatch computes. Every dispatch is recorded with one,
// chosen where it is recorded (Recorder.Dispatch's caller; Gemm for GEMMs), so
// that counting a step's work and profiling its GPU time group dispatches by
// what they do rather than by shader names.
type Kind uint8

// The kinds of dispatch. The zero Kind is none: Dispatch refuses it.
const (
	// KindGemmDense is a GEMM over whole operands.
	KindGemmDense Kind = iota + 1
	// KindGemmRowList is a GEMM over a list of rows of op(A) or C, all channels.
	KindGemmRowList
	// KindGemmKeptChannels is a GEMM over the kept channels (a list of op(B)'s
	// columns or of the inner index): SparseLoRA's sparse layers.
	KindGemmKeptChannels
	// KindGemmThin is a dense GEMM with a size at most ThinGemm: the LoRA
	// adapters' and the predictor's low-rank products.
	KindGemmThin
	// KindGemmGrid sizes a gathered GEMM's grid on the GPU.
	KindGemmGrid
	// KindAttentionForward, KindAttentionQueryGrad and KindAttentionKeyValueGrad
	// are the passes of the training attention: forward, dq, and dk and dv.
	KindAttentionForward
	KindAttentionQueryGrad
	KindAttentionKeyValueGrad
	// KindAttentionDecode is the attention of one new token over a KV cache.
	KindAttentionDecode
	// KindLinearDecode is a frozen linear layer on a few rows (generation).
	KindLinearDecode
	// KindSelection scores and selects SparseLoRA's kept channels.
	KindSelection
	// KindLoss is the cross-entropy loss and its gradient.
	KindLoss
	// KindNorm is RMSNorm, forward or backward.
	KindNorm
	// KindEmbedding is the token embedding lookup.
	KindEmbedding
	// KindElementwise is an elementwise op: RoPE, SwiGLU, bias, axpby, scale.
	KindElementwise
	// KindReduction sums rows or columns: row sums, weight-gradient sums.
	KindReduction
	// KindOptimizer is an optimizer update (AdamW).
	KindOptimizer
)

// ThinGemm is the largest smallest-size of a KindGemmThin GEMM: the rank of
// the adapters and the predictor, far below any model dimension.
const ThinGemm = 64

var kindNames = [...]string{
	KindGemmDense:             "GEMM, dense",
	KindGemmRowList:           "GEMM, row list, all channels",
	KindGemmKeptChannels:      "GEMM, kept channels (sparse rows)",
	KindGemmThin:              "GEMM, thin (LoRA, predictor)",
	KindGemmGrid:              "GEMM grid sizing",
	KindAttentionForward:      "attention, forward",
	KindAttentionQueryGrad:    "attention, dq",
	KindAttentionKeyValueGrad: "attention, dk and dv",
	KindAttentionDecode:       "attention, decode",
	KindLinearDecode:          "linear, decode",
	KindSelection:             "channel selection",
	KindLoss:                  "cross-entropy",
	KindNorm:                  "RMSNorm",
	KindEmbedding:             "embedding",
	KindElementwise:           "elementwise (RoPE, SwiGLU, bias, axpby)",
	KindReduction:             "row and column sums",
	KindOptimizer:             "optimizer",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// IsGemm reports whether k is a GEMM, whose Dispatch carries its GemmWork.
func (k Kind) IsGemm() bool { return k >= KindGemmDense && k <= KindGemmThin }

// gemmKind is the kind of a GEMM with work w.
func gemmKind(w *GemmWork) Kind {
	switch {
	case w.Cols != nil || w.Inner != nil:
		return KindGemmKeptChannels
	case w.Rows != nil:
		return KindGemmRowList
	case min(w.M, w.N, w.K) <= ThinGemm:
		return KindGemmThin
	}
	return KindGemmDense
}
