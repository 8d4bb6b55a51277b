package model

import (
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// WeightGrads are the gradients, accumulated by Backward when Model.Grads is
// set, of the weights outside the projections: the embedding table, the
// norms and the LM head (the projections' weight gradients come through their
// Adapter hooks). A nil tensor keeps its weight frozen. With tied embeddings
// Head and Embed are the same tensor, which then collects both gradients.
type WeightGrads struct {
	Embed, Head, Norm   *gpu.Tensor
	InputNorm, PostNorm []*gpu.Tensor // per layer
}

// normWeightGrad adds an RMSNorm's weight gradient when it is trained.
func normWeightGrad(rec *gpu.Recorder, dw, dy, x, rstd *gpu.Tensor, T, H int) error {
	if dw == nil {
		return nil
	}
	if err := RMSNormWeightGrad(rec, dw, dy, x, rstd, T, H); err != nil {
		return fmt.Errorf("norm weight gradient: %w", err)
	}
	return nil
}

// layerNormGrads are layer i's norm weight gradients (nil when frozen).
func (g *WeightGrads) layerNormGrads(i int) (input, post *gpu.Tensor) {
	if g == nil {
		return nil, nil
	}
	if i < len(g.InputNorm) {
		input = g.InputNorm[i]
	}
	if i < len(g.PostNorm) {
		post = g.PostNorm[i]
	}
	return input, post
}
