package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/sparselora/sparselora/gpu"
)

// Sampler picks the next token from a row of logits.
type Sampler interface {
	Next(logits []float32) int32
}

type greedy struct{}

func (greedy) Next(logits []float32) int32 {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return int32(best)
}

// Greedy picks the most likely token (ties: the lowest id, as torch.argmax).
func Greedy() Sampler { return greedy{} }

// Sampling draws from softmax(logits / Temperature) restricted to the smallest
// set of tokens whose probability reaches TopP (nucleus sampling).
type Sampling struct {
	Temperature float64
	TopP        float64
	Rand        *rand.Rand
}

// Next implements Sampler.
func (s Sampling) Next(logits []float32) int32 {
	if s.Temperature <= 0 {
		return greedy{}.Next(logits)
	}
	probs := make([]float64, len(logits))
	maxLogit := float64(logits[greedy{}.Next(logits)])
	var sum float64
	for i, v := range logits {
		probs[i] = math.Exp((float64(v) - maxLogit) / s.Temperature)
		sum += probs[i]
	}
	order := make([]int, len(probs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case probs[a] > probs[b]:
			return -1
		case probs[a] < probs[b]:
			return 1
		}
		return a - b
	})
	topP := s.TopP
	if topP <= 0 || topP > 1 {
		topP = 1
	}
	var kept float64
	n := 0
	for n < len(order) && (n == 0 || kept/sum < topP) {
		kept += probs[order[n]]
		n++
	}
	r := s.Rand.Float64() * kept
	for _, i := range order[:n] {
		r -= probs[i]
		if r <= 0 {
			return int32(i)
		}
	}
	return int32(order[n-1])
}

// Generate continues prompt by n tokens with the model and its adapters. The
// prompt runs through the full forward pass once (prefill); each new token
// then runs through the layers alone, attending to the keys and values kept
// from earlier positions (a KV cache in the workspace's activations).
func (m *Model) Generate(ctx context.Context, prompt []int32, n int, s Sampler) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("generate: empty prompt")
	}
	if n <= 0 {
		return slices.Clone(prompt), nil
	}
	seq := len(prompt) + n
	if seq > m.Rope.Seq {
		return nil, fmt.Errorf("generate: %d tokens exceed the model's %d positions", seq, m.Rope.Seq)
	}
	w, err := m.NewWorkspace(1, seq)
	if err != nil {
		return nil, err
	}
	defer w.Release()
	V := m.Config.VocabSize
	logits, err := m.Dev.NewTensor(gpu.F32, "generation logits", 1, V)
	if err != nil {
		return nil, err
	}
	defer logits.Release()
	rec := m.Dev.NewRecorder()
	defer rec.Release()

	b := Batch{Rows: 1, Seq: seq, InputIDs: make([]int32, seq), Mask: make([]int32, seq), Labels: make([]int32, seq)}
	copy(b.InputIDs, prompt)
	for i := range b.Labels {
		b.Labels[i] = IgnoreLabel
		if i < len(prompt) {
			b.Mask[i] = 1
		}
	}
	if err := w.Load(m, b); err != nil {
		return nil, err
	}
	if err := m.Trunk(rec, w); err != nil {
		return nil, err
	}
	tokens := slices.Clone(prompt)
	for pos := len(prompt) - 1; ; pos++ {
		if err := w.head.Logits(rec, rowsOf(w.normed, pos, 1, m.Config.HiddenSize), m.Head, logits); err != nil {
			return tokens, err
		}
		if err := rec.Submit(); err != nil {
			return tokens, err
		}
		values, err := logits.Download(ctx)
		if err != nil {
			return tokens, err
		}
		next := s.Next(values)
		if next < 0 || int(next) >= V {
			return tokens, fmt.Errorf("generate: sampler returned token %d outside the vocabulary", next)
		}
		tokens = append(tokens, next)
		if len(tokens) == seq {
			return tokens, nil
		}
		if err := ctx.Err(); err != nil {
			return tokens, err
		}
		// The new token enters the cache at pos+1: its id and its mask bit.
		if err := w.ids.Buf.Write(w.ids.Offset+uint64(4*(pos+1)), gpu.U32Bytes([]uint32{uint32(next)})); err != nil {
			return tokens, err
		}
		if err := w.mask.Buf.Write(w.mask.Offset+uint64(4*(pos+1)), gpu.U32Bytes([]uint32{1})); err != nil {
			return tokens, err
		}
		if err := m.decodeStep(rec, w, pos+1); err != nil {
			return tokens, err
		}
	}
}
