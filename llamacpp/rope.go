// This file carries Llama 3.1/3.2's RoPE scaling (rope_type "llama3")
// through GGUF: llama.cpp has no metadata for it but a tensor,
// rope_freqs.weight, holding per frequency the factor its angle is divided
// by (convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors).

package llamacpp

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
)

// ropeFreqsName is llama.cpp's tensor of llama3 RoPE frequency factors.
const ropeFreqsName = "rope_freqs.weight"

// ropeFactors are the HeadDim/2 frequency factors of a llama3 RoPE config:
// default frequency over scaled frequency (1 for high frequencies, Factor
// for low ones, in between where Llama 3 interpolates).
func ropeFactors(cfg *model.Config) []float32 {
	scaled := cfg.InvFreq()
	plain := *cfg
	plain.Rope = model.Rope{Type: model.RopeDefault, Theta: cfg.Rope.Theta}
	factors := make([]float32, len(scaled))
	for i, f := range plain.InvFreq() {
		factors[i] = float32(f / scaled[i])
	}
	return factors
}

// ropeFreqsTensor is the rope_freqs.weight of a llama3 RoPE config (F32,
// ne [HeadDim/2]).
func ropeFreqsTensor(cfg *model.Config) gguf.Tensor {
	factors := ropeFactors(cfg)
	return gguf.Tensor{Name: ropeFreqsName, Dims: []int64{int64(len(factors))}, Type: gguf.F32,
		Data: func() ([]byte, error) { return gguf.Encode(gguf.F32, factors) }}
}

// llama3Scaling recovers HF's llama3 rope_scaling from rope_freqs.weight for
// a model of head dimension headDim and base theta. Only the ratios
// low_freq_factor/original_max_position_embeddings and high/original (and
// factor, the largest factor) shape the factors, so the original context is
// taken as Llama 3's 8192: Llama 3's own low 1 and high 4 when they fit,
// else low and high solved from the two outermost interpolated factors. The
// result must reproduce every factor to float32 rounding.
func llama3Scaling(factors []float32, headDim int, theta float64) (map[string]any, error) {
	if len(factors) != headDim/2 {
		return nil, fmt.Errorf("tensor %q has %d factors, want head_dim/2 = %d", ropeFreqsName, len(factors), headDim/2)
	}
	factor := 1.0
	for _, f := range factors {
		if !(f >= 1) || math.IsInf(float64(f), 0) {
			return nil, fmt.Errorf("tensor %q holds factor %g (llama3 factors are finite and >= 1)", ropeFreqsName, f)
		}
		factor = max(factor, float64(f))
	}
	if factor == 1 {
		return nil, nil // no scaling
	}
	const old = 8192.0
	build := func(low, high float64) (map[string]any, error) {
		scaling := map[string]any{"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
			"high_freq_factor": high, "original_max_position_embeddings": int(old)}
		cfg := &model.Config{HeadDim: headDim, Rope: model.Rope{Type: model.RopeLlama3, Theta: theta, Factor: factor,
			LowFreqFactor: low, HighFreqFactor: high, OriginalMaxPositionEmbeddings: int(old)}}
		if !(low > 0 && low < high) {
			return nil, fmt.Errorf("low_freq_factor %g, high_freq_factor %g", low, high)
		}
		for i, f := range ropeFactors(cfg) {
			if math.Abs(float64(f)-float64(factors[i])) > 1e-5*float64(factors[i]) {
				return nil, fmt.Errorf("factor %d would be %g, the file holds %g", i, f, factors[i])
			}
		}
		return scaling, nil
	}
	if s, err := build(1, 4); err == nil {
		return s, nil
	}
	// Between the boundaries, 1/r = (1-s)/factor + s with s = (old/wavelen -
	// low)/(high - low): linear in 1/wavelen = inv_freq/2π.
	var xs, ss []float64
	for i, f := range factors {
		if f > 1 && float64(f) < factor {
			xs = append(xs, old*math.Pow(theta, -float64(2*i)/float64(headDim))/(2*math.Pi))
			ss = append(ss, (1/float64(f)-1/factor)/(1-1/factor))
		}
	}
	if len(xs) < 2 {
		return nil, fmt.Errorf("tensor %q: factors %v match no llama3 rope scaling this reader can recover (low_freq_factor 1, high_freq_factor 4, or two interpolated frequencies)", ropeFreqsName, factors)
	}
	a, b := 0, len(xs)-1
	slope := (ss[b] - ss[a]) / (xs[b] - xs[a]) // = 1/(high - low)
	low := xs[a] - ss[a]/slope
	s, err := build(low, low+1/slope)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: factors %v match no llama3 rope scaling: %w", ropeFreqsName, factors, err)
	}
	return s, nil
}
