package model

import (
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/safetensors"
)

// Quantization describes frozen weights stored in MLX's affine format: per
// row, groups of GroupSize input weights share a scale and a bias (in the
// weights' dtype) and each weight is a Bits-bit code. Bits 0 is unquantized.
type Quantization struct {
	Bits, GroupSize int
}

// ParameterCount is the number of parameters of the base model.
func (c *Config) ParameterCount() int64 {
	var n int64
	for _, shape := range ExpectedTensors(c) {
		p := int64(1)
		for _, d := range shape {
			p *= int64(d)
		}
		n += p
	}
	return n
}

// ProjectionShape is projection p's input and output width.
func (c *Config) ProjectionShape(p Projection) (in, out int) {
	q, kv := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	switch p {
	case ProjQ:
		return c.HiddenSize, q
	case ProjK, ProjV:
		return c.HiddenSize, kv
	case ProjO:
		return q, c.HiddenSize
	case ProjDown:
		return c.IntermediateSize, c.HiddenSize
	}
	return c.HiddenSize, c.IntermediateSize
}

// WeightBytes counts the bytes Load allocates for the frozen weights:
// matrices in dtype, or quantized by q (codes in u32 words plus a scale and a
// bias per group in scales, the dtype a quantized checkpoint stores them in or
// that of the float checkpoint quantized at load; matrices whose input size
// the group does not divide stay in dtype, as Load leaves them), norms and
// biases in f32, and the RoPE table. The embedding table is not counted
// when it stays in host memory (hostEmbedding, LoadOptions.HostEmbedding, with
// an untied head: Config.EmbeddingOnHost). The per-module overrides of an
// MLX-quantized checkpoint's config (c.Quantization) replace q for their
// modules.
func (c *Config) WeightBytes(dtype, scales gpu.DType, q Quantization, hostEmbedding bool) uint64 {
	var total uint64
	def := q
	for name, shape := range ExpectedTensors(c) {
		if name == "model.embed_tokens.weight" && c.EmbeddingOnHost(hostEmbedding) {
			continue
		}
		q = def
		if c.Quantization != nil {
			if o, ok := c.Quantization.Overrides[strings.TrimSuffix(name, ".weight")]; ok {
				q = Quantization{}
				if o != nil {
					q = *o
				}
			}
		}
		n := 1
		for _, d := range shape {
			n *= d
		}
		switch {
		case len(shape) == 2 && q.Bits > 0 && q.GroupSize > 0 && shape[1]%q.GroupSize == 0:
			rows, cols := uint64(shape[0]), uint64(shape[1])
			words := cols * uint64(q.Bits) / 32
			groups := cols / uint64(q.GroupSize)
			total += 4*rows*words + 2*scales.Bytes(int(rows*groups))
		case len(shape) == 2:
			total += dtype.Bytes(n)
		default: // norms and biases stay f32
			total += gpu.F32.Bytes(n)
		}
	}
	half := uint64(c.HeadDim / 2)
	total += 4 * 2 * uint64(c.MaxPositionEmbeddings) * half
	return total
}

// CheckpointScaleDType is the GPU storage size class of the scales and biases
// that loading dir quantized keeps (as stored in an MLX-quantized checkpoint,
// or the float weights' dtype when quantized at load): BF16 for 2-byte types
// (bf16, f16), F32 otherwise. It reads only the safetensors header.
func CheckpointScaleDType(dir string) (gpu.DType, error) {
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return 0, err
	}
	defer ckpt.Close()
	info, err := ckpt.Info("model.embed_tokens.scales")
	if err != nil {
		if info, err = ckpt.Info("model.embed_tokens.weight"); err != nil {
			return 0, err
		}
	}
	if info.Dtype.Size() == 2 {
		return gpu.BF16, nil
	}
	return gpu.F32, nil
}

// WorkspaceBytes is what NewWorkspaceWith allocates, by part.
type WorkspaceBytes struct {
	// Saved are the activations kept from forward to backward: every layer's
	// (its input only with checkpointing) and the final norm's.
	Saved uint64
	// Recompute is checkpointing's one set of layer activations that
	// backward refills layer by layer.
	Recompute uint64
	// Gradients is the backward scratch shared by the layers.
	Gradients uint64
	// Attention is the attention backward's scratch.
	Attention uint64
	// LMHead is the head's logits chunk and loss statistics.
	LMHead uint64
	// Inputs are the token ids, mask, targets, token lists and loss.
	Inputs uint64
}

// Total is the sum of the parts.
func (w WorkspaceBytes) Total() uint64 {
	return w.Saved + w.Recompute + w.Gradients + w.Attention + w.LMHead + w.Inputs
}

// PlanWorkspace mirrors NewWorkspaceWith for batches of rows x seq tokens with
// adapters of ranks[p] on projection p of every layer (0: none) and a device
// of limits lim (the LM head's chunk depends on the storage binding limit).
func (c *Config) PlanWorkspace(rows, seq int, ranks [7]int, opts WorkspaceOptions, lim gpu.Limits) WorkspaceBytes {
	T := uint64(rows) * uint64(seq)
	H, I := uint64(c.HiddenSize), uint64(c.IntermediateSize)
	q := uint64(c.NumAttentionHeads * c.HeadDim)
	kv := uint64(c.NumKeyValueHeads * c.HeadDim)
	heads := uint64(c.NumAttentionHeads)
	L := uint64(c.NumHiddenLayers)
	var sumRank, maxRank uint64
	for _, r := range ranks {
		sumRank += uint64(r)
		maxRank = max(maxRank, uint64(r))
	}
	// allocActivations: xn1, mid, xn2 (3H), two rstd, q and the attention
	// output, k and v, the log-sum-exp, gate, up and h; plus x A^T per adapter.
	layer := 3*H + 2 + 2*q + 2*kv + heads + 3*I + sumRank
	var w WorkspaceBytes
	if opts.ForwardOnly {
		w.Saved = 4 * T * min(L, 2) * H
		w.Recompute = 4 * T * layer
	} else if opts.GradCheckpoint {
		w.Saved = 4 * T * uint64(checkpointInputs(int(L), opts.checkpointEvery())) * H
		w.Recompute = 4 * T * layer
	} else {
		w.Saved = 4 * T * L * (H + layer)
	}
	w.Saved += 4 * T * (2*H + 1) // final, normed, rstdF
	// dRes, dMid, dXn, dh and the adapters' scratch (the gate's and up's
	// gradients overwrite gate and up), and dq, dAttn, dk, dv unless they fit
	// in dh and h.
	if !opts.ForwardOnly {
		w.Gradients = 4 * T * (3*H + I + maxRank)
		if _, ok := attentionGradOffsets(int(T), int(q), int(kv), int(I)); !ok {
			w.Gradients += 4 * T * (2*q + 2*kv)
		}
		w.Attention = 4 * T * heads
	}
	w.Inputs = 4*3*T + 4 + 4*3*(T+1)
	chunk := uint64(c.VocabSize)
	if cols, err := chunkColumns(lim, int(T), c.HiddenSize, c.VocabSize, 0); err == nil {
		chunk = uint64(cols)
	}
	w.LMHead = 4*T*chunk + 4*(5*T+1)
	return w
}

// StagingBytes is what Workspace.Stage allocates for micro micro-batches of
// rows x seq tokens.
func StagingBytes(rows, seq, micro int) uint64 {
	T := uint64(rows) * uint64(seq)
	return 4 * (3*T + 3*(T+1)) * uint64(micro)
}

// GeneratorBytes is what NewGenerator(maxSeq, chunkRows) allocates (with the
// adapters' scratch of rank maxRank): the KV cache of every layer and one
// chunk's activations, its token ids unless the embedding table is in host
// memory (hostEmbedding as at WeightBytes).
func (c *Config) GeneratorBytes(maxSeq, chunkRows, maxRank int, hostEmbedding bool) uint64 {
	if chunkRows <= 0 {
		chunkRows = 256
	}
	R := uint64(min(chunkRows, maxSeq))
	H, I := uint64(c.HiddenSize), uint64(c.IntermediateSize)
	q := uint64(c.NumAttentionHeads * c.HeadDim)
	kv := uint64(c.NumKeyValueHeads * c.HeadDim)
	cache := 4 * 2 * uint64(c.NumHiddenLayers) * uint64(maxSeq) * kv
	chunk := 4 * R * (3*H + 1 + 2*q + 3*I + uint64(maxRank))
	if !c.EmbeddingOnHost(hostEmbedding) {
		chunk += 4 * R // the token ids
	}
	return cache + chunk + 4*(H+1+uint64(c.VocabSize))
}
