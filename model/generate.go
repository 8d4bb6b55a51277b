package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
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

// GenerateOptions are the optional parts of GenerateStream.
type GenerateOptions struct {
	// Stop ends generation after any of these ids (end-of-sequence tokens) is
	// generated; it is kept in the output, as Hugging Face does.
	Stop []int32
	// OnToken, when set, receives each new token as soon as it is chosen
	// (streaming); an error from it ends generation and is returned.
	OnToken func(int32) error
	// ChunkRows is how many prompt tokens run through the model at once (0:
	// the Generator's default).
	ChunkRows int
}

// Generate continues prompt by n tokens with the model and its adapters and
// returns the prompt followed by them. The prompt runs through the layers in
// batched chunks once (prefill), keeping every position's keys and values in
// a KV cache; each new token then costs one pass of that token alone over the
// cache.
func (m *Model) Generate(ctx context.Context, prompt []int32, n int, s Sampler) ([]int32, error) {
	return m.GenerateStream(ctx, prompt, n, s, GenerateOptions{})
}

// GenerateStream is Generate with stop tokens and streaming: it returns the
// prompt and up to n new tokens, fewer when a stop token comes first. On an
// error it returns the tokens so far with it.
func (m *Model) GenerateStream(ctx context.Context, prompt []int32, n int, s Sampler, opts GenerateOptions) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("generate: empty prompt")
	}
	if n <= 0 {
		return slices.Clone(prompt), nil
	}
	// The last new token is never fed back, so the cache needs one position less.
	g, err := m.NewGenerator(len(prompt)+n-1, opts.ChunkRows)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	defer g.Release()
	return g.Generate(ctx, prompt, n, s, opts)
}

// Generate empties the cache and continues prompt by up to n tokens, as
// Model.GenerateStream (whose ChunkRows option it ignores). The cache must
// hold len(prompt)+n-1 positions.
func (g *Generator) Generate(ctx context.Context, prompt []int32, n int, s Sampler, opts GenerateOptions) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, errors.New("generate: empty prompt")
	}
	tokens := slices.Clone(prompt)
	if n <= 0 {
		return tokens, nil
	}
	if need := len(prompt) + n - 1; need > g.MaxSeq {
		return nil, fmt.Errorf("generate: %d prompt tokens and %d new ones need %d cache positions, the generator holds %d", len(prompt), n, need, g.MaxSeq)
	}
	g.Reset()
	V := g.m.Config.VocabSize
	feed := prompt
	for {
		logits, err := g.Append(ctx, feed)
		if err != nil {
			return tokens, fmt.Errorf("generate: %w", err)
		}
		next := s.Next(logits)
		if next < 0 || int(next) >= V {
			return tokens, fmt.Errorf("generate: sampler returned token %d outside the vocabulary", next)
		}
		tokens = append(tokens, next)
		if opts.OnToken != nil {
			if err := opts.OnToken(next); err != nil {
				return tokens, err
			}
		}
		if len(tokens)-len(prompt) == n || slices.Contains(opts.Stop, next) {
			return tokens, nil
		}
		if err := ctx.Err(); err != nil {
			return tokens, err
		}
		feed = []int32{next}
	}
}
