package model

import "github.com/sparselora/sparselora/gpu"

// TokenSets describe a batch's tokens by role (SPEC section 4): a real token
// has attention_mask 1; a scored position's next-token prediction enters the
// loss; a context token is real and not scored. Lists hold row indices into the
// [Rows*Seq, ...] activations and live on the GPU (uploaded once per batch).
type TokenSets struct {
	Rows, Seq int
	// Mask is [Rows*Seq] u32 words (in an F32-typed tensor): 1 for real tokens.
	Mask    *gpu.Tensor
	Real    gpu.IndexList
	Context gpu.IndexList
	Scored  gpu.IndexList
	// Counts of each list, known on the host (the batch came from it).
	RealCount, ContextCount, ScoredCount int
}

// RowSet selects token rows of a [tokens, ...] activation: the entries of List,
// or rows 0..Count-1 when List is nil. Count is how many rows there are: a
// list's count is known on the host (the batch came from it), sizes the
// dispatches, and bounds what the GPU reads from the list.
type RowSet struct {
	List  *gpu.IndexList
	Count int
}

// Gathered reports whether the rows come through an index list.
func (r RowSet) Gathered() bool { return r.List != nil }

// AttentionChannels are the channels an attention layer's frozen projections
// compute for context tokens; a nil list means all channels. Q, K and V list
// kept output channels of q_proj, k_proj and v_proj; O lists the kept input
// channels of o_proj (the attention-output channels that read a kept V channel).
type AttentionChannels struct {
	Q, K, V, O *gpu.IndexList
}

// Dense reports whether nothing is dropped.
func (a AttentionChannels) Dense() bool { return a.Q == nil && a.K == nil && a.V == nil && a.O == nil }

// ChannelSelector chooses, per batch and layer, the channels that the frozen
// projections compute on context tokens. It records its work on the GPU and
// returns index lists that the sparse GEMMs read there: no host round trip.
// Implemented by package predictor.
type ChannelSelector interface {
	// Attention selects from the layer's input_layernorm output x [T, hidden].
	Attention(rec *gpu.Recorder, layer int, x *gpu.Tensor, tokens *TokenSets) (AttentionChannels, error)
	// MLP selects the kept intermediate channels (gate/up outputs, down inputs)
	// from the post_attention_layernorm output x; nil means dense.
	MLP(rec *gpu.Recorder, layer int, x *gpu.Tensor, tokens *TokenSets) (*gpu.IndexList, error)
	// SparseScoredTokens reports whether scored tokens run on the kept
	// channels too (a table's skip_output_tokens: false); otherwise they run
	// dense (SPEC 4.5).
	SparseScoredTokens() bool
}
