package model

import "github.com/sparselora/sparselora/gpu"

// Memory is an estimate of the GPU memory a model needs, in bytes.
type Memory struct {
	Weights     uint64 // frozen weights as stored on the GPU
	Activations uint64 // a Workspace: saved activations and gradient scratch
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

// EstimateMemory counts the bytes Load and NewWorkspace allocate for weights
// stored as dtype and batches of rows x seq tokens (f32 activations).
func (c *Config) EstimateMemory(dtype gpu.DType, rows, seq int) Memory {
	var m Memory
	for _, shape := range ExpectedTensors(c) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		if len(shape) == 2 { // matrices take the storage dtype
			m.Weights += dtype.Bytes(n)
		} else {
			m.Weights += gpu.F32.Bytes(n) // norms and biases stay f32
		}
	}
	T := uint64(rows * seq)
	H, I := uint64(c.HiddenSize), uint64(c.IntermediateSize)
	q := uint64(c.NumAttentionHeads * c.HeadDim)
	kv := uint64(c.NumKeyValueHeads * c.HeadDim)
	heads := uint64(c.NumAttentionHeads)
	// Mirrors NewWorkspace: per layer x, xn1, mid, xn2 (4H), two rstd, q and the
	// attention output, k and v, the log-sum-exp, gate, up and h.
	perLayer := 4*H + 2 + 2*q + 2*kv + heads + 3*I
	shared := 3*H + 1 + 3 + 3*H + 2*q + 2*kv + 3*I + heads // final, normed, rstd, ids/mask/targets, gradient scratch
	m.Activations = 4 * T * (uint64(c.NumHiddenLayers)*perLayer + shared)
	m.Activations += min(uint64(lmHeadScratchBytes), 4*T*uint64(c.VocabSize)) + 4*6*T // logits chunk, per-row state
	return m
}
