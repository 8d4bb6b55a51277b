// Package full makes every weight of a model trainable: full-parameter
// fine-tuning and pretraining, as llm.c and MLX-LM offer besides LoRA. It owns
// the gradients of all weights (projections and their biases through the
// model's Adapter hook, the embedding, norms and LM head through
// model.WeightGrads) and lists them, with the weights themselves, as the
// optimizer's parameters: AdamW then updates the model in place. Biases and
// norm weights get no weight decay, as in the transformers Trainer. The Set
// owns the gradients only; the weights stay the model's.
package full

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// Set is the gradients of every weight of one model.
type Set struct {
	m      *model.Model
	grads  model.WeightGrads
	params []optim.Param
	owned  []*gpu.Tensor
}

// New attaches weight-gradient hooks to every projection of m and allocates
// the gradients. The weights must be f32 (bf16 weights cannot take small
// updates). Create workspaces after New, as after attaching adapters.
func New(m *model.Model) (*Set, error) {
	if m.Embed == nil {
		return nil, errors.New("full-parameter training trains the embedding table, which this model keeps in host memory (load it without model.LoadOptions.HostEmbedding)")
	}
	s := &Set{m: m}
	fail := func(err error) (*Set, error) {
		s.Release()
		return nil, err
	}
	grad := func(name string, w *gpu.Tensor, noDecay bool) (*gpu.Tensor, error) {
		switch w.DType {
		case gpu.F32:
		case gpu.Quantized:
			return nil, fmt.Errorf("full-parameter training needs float weights; %s is quantized (%s): drop --quantize, or train a float (f32/bf16/f16) checkpoint", name, w.Affine)
		default:
			return nil, fmt.Errorf("full-parameter training needs f32 weights; %s is %s (drop --bf16)", name, w.DType)
		}
		g, err := m.Dev.NewTensor(gpu.F32, "grad "+name, w.Shape...)
		if err != nil {
			return nil, fmt.Errorf("allocating the gradient of %s: %w", name, err)
		}
		s.owned = append(s.owned, g)
		s.params = append(s.params, optim.Param{Name: name, Value: w, Grad: g, NoDecay: noDecay})
		return g, nil
	}
	var err error
	if s.grads.Embed, err = grad("model.embed_tokens.weight", m.Embed, false); err != nil {
		return fail(err)
	}
	s.grads.Head = s.grads.Embed
	if m.Head != m.Embed {
		if s.grads.Head, err = grad("lm_head.weight", m.Head, false); err != nil {
			return fail(err)
		}
	}
	if s.grads.Norm, err = grad("model.norm.weight", m.Norm, true); err != nil {
		return fail(err)
	}
	for i, l := range m.Layers {
		prefix := fmt.Sprintf("model.layers.%d.", i)
		in, err := grad(prefix+"input_layernorm.weight", l.InputNorm, true)
		if err != nil {
			return fail(err)
		}
		post, err := grad(prefix+"post_attention_layernorm.weight", l.PostNorm, true)
		if err != nil {
			return fail(err)
		}
		s.grads.InputNorm = append(s.grads.InputNorm, in)
		s.grads.PostNorm = append(s.grads.PostNorm, post)
		for p, lin := range l.Proj {
			if lin == nil {
				continue
			}
			name := prefix + model.Projection(p).Module() + "." + model.Projection(p).String()
			h := &projGrad{out: lin.Out, in: lin.In}
			if h.dW, err = grad(name+".weight", lin.W, false); err != nil {
				return fail(err)
			}
			if lin.Bias != nil {
				if h.dB, err = grad(name+".bias", lin.Bias, true); err != nil {
					return fail(err)
				}
			}
			l.Adapters[p] = h
		}
	}
	m.Grads = &s.grads
	return s, nil
}

// Params lists every weight with its gradient, for optim.NewOptimizer.
func (s *Set) Params() []optim.Param { return slices.Clone(s.params) }

// ZeroGrad records zeroing every gradient.
func (s *Set) ZeroGrad(rec *gpu.Recorder) error {
	if rec == nil {
		return errors.New("full: ZeroGrad: nil recorder")
	}
	for _, g := range s.owned {
		rec.Clear(g.Buf, g.Offset, g.Bytes())
	}
	return nil
}

// Release detaches the hooks and frees the gradients.
func (s *Set) Release() {
	if s.m != nil {
		for _, l := range s.m.Layers {
			for p, a := range l.Adapters {
				if _, ok := a.(*projGrad); ok {
					l.Adapters[p] = nil
				}
			}
		}
		if s.m.Grads == &s.grads {
			s.m.Grads = nil
		}
	}
	for _, g := range s.owned {
		g.Release()
	}
	s.owned, s.params = nil, nil
}

// projGrad is the model.Adapter of a trained projection: it adds nothing to
// the output and, in backward, accumulates dW += dy^T x and db += sum dy.
type projGrad struct {
	out, in int
	dW, dB  *gpu.Tensor
}

func (h *projGrad) Rank() int { return 0 }

func (h *projGrad) Forward(rec *gpu.Recorder, x, y, xa *gpu.Tensor, rows model.RowSet) error {
	return nil
}

func (h *projGrad) Backward(rec *gpu.Recorder, x, xa, dy, dx, dxa *gpu.Tensor, rows model.RowSet) error {
	if rows.Count == 0 {
		return nil
	}
	// dy [T, out] transposed times x [T, in]: the TN GEMM, summed over the
	// real tokens only.
	g := gpu.GemmArgs{A: dy, B: x, C: h.dW, ATrans: true, M: h.out, N: h.in, K: rows.Count, Beta: 1}
	if rows.Gathered() {
		g.GatherK, g.GatherAK = rows.List, true
	}
	if err := gpu.Gemm(rec, g); err != nil {
		return fmt.Errorf("weight gradient: %w", err)
	}
	if h.dB != nil {
		// The model clears the gradient rows of padding, so summing every row
		// adds nothing for them.
		tokens := dy.Len() / h.out
		if err := model.BiasGrad(rec, h.dB, rowsView(dy, tokens, h.out), tokens, h.out); err != nil {
			return fmt.Errorf("bias gradient: %w", err)
		}
	}
	return nil
}

// rowsView is the first rows of a [.., cols] tensor.
func rowsView(t *gpu.Tensor, rows, cols int) *gpu.Tensor {
	v, err := t.Rows(0, rows)
	if err != nil {
		return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset, Shape: []int{rows, cols}, DType: t.DType}
	}
	return v
}

// InitRandom sets every weight as transformers initialises a new model
// (_init_weights): projections and embeddings normal(0, std), biases 0,
// norm weights 1, drawn from seed.
func InitRandom(m *model.Model, std float64, seed uint64) error {
	if math.IsNaN(std) || math.IsInf(std, 0) || std < 0 {
		return fmt.Errorf("full: initializer_range %g must be a finite, non-negative number", std)
	}
	if m.Embed == nil {
		return errors.New("full: initialising the weights: the embedding table is in host memory (load the model without model.LoadOptions.HostEmbedding)")
	}
	rng := rand.New(rand.NewPCG(seed, 0x1417))
	tensors := m.NamedTensors()
	// A fixed order: the same seed gives the same model.
	names := slices.Sorted(maps.Keys(tensors))
	for _, name := range names {
		t := tensors[name]
		v := make([]float32, t.Len())
		switch {
		case isNorm(name):
			for i := range v {
				v[i] = 1
			}
		case isBias(name):
		default:
			for i := range v {
				v[i] = float32(rng.NormFloat64() * std)
			}
		}
		if err := t.Upload(v); err != nil {
			return fmt.Errorf("initialising %s: %w", name, err)
		}
	}
	return nil
}

func isNorm(name string) bool {
	return strings.HasSuffix(name, "layernorm.weight") || name == "model.norm.weight"
}

func isBias(name string) bool { return strings.HasSuffix(name, ".bias") }
