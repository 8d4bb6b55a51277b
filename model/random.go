package model

import (
	"fmt"
	"math/rand/v2"

	"github.com/sparselora/sparselora/gpu"
)

// Built-in architectures for benchmarks with random weights (the shapes of the
// published checkpoints; no weights are needed).
var builtinShapes = map[string]string{
	"llama2-7b": `{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000,
		"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
		"num_key_value_heads": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "rope_theta": 10000.0,
		"tie_word_embeddings": false}`,
	"llama3-8b": `{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
		"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
		"num_key_value_heads": 8, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "rope_theta": 500000.0,
		"tie_word_embeddings": false}`,
}

// BuiltinShape returns the config of a built-in architecture ("llama2-7b",
// "llama3-8b").
func BuiltinShape(name string) (*Config, error) {
	raw, ok := builtinShapes[name]
	if !ok {
		return nil, fmt.Errorf("unknown model shape %q (want llama2-7b, llama3-8b or a config.json)", name)
	}
	return ParseConfig([]byte(raw), name)
}

// NewRandom builds a model of cfg's shape with random frozen weights (normal,
// std 0.02, norms 1), for benchmarks: the work per step depends only on the
// shapes. maxSeq sizes the RoPE table.
func NewRandom(dev *gpu.Device, cfg *Config, dtype gpu.DType, maxSeq int, seed uint64) (*Model, error) {
	return NewRandomWith(dev, cfg, LoadOptions{DType: dtype}, maxSeq, seed)
}

// NewRandomWith is NewRandom with the weights stored as opts says, as Load
// stores a checkpoint's: in opts.DType; with opts.Quantize, the matrices that
// its groups divide quantized as Load's --quantize does (MLX's rounding;
// scales and biases in the dtype, as a checkpoint of that dtype quantized at
// load keeps them; the model's config is then a copy of cfg naming the
// quantization); with opts.HostEmbedding and an untied head, the embedding
// table in host memory. The values drawn do not depend on opts.
func NewRandomWith(dev *gpu.Device, cfg *Config, opts LoadOptions, maxSeq int, seed uint64) (*Model, error) {
	dtype, q := opts.DType, opts.Quantize
	if q != nil {
		if err := q.Check(); err != nil {
			return nil, err
		}
		c := *cfg
		c.Quantization = &QuantizationConfig{Default: *q}
		cfg = &c
	}
	scales := gpu.ScaleF32
	if dtype == gpu.BF16 {
		scales = gpu.ScaleBF16
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	m := &Model{Config: cfg, Dev: dev}
	ok := false
	defer func() {
		if !ok {
			m.Release()
		}
	}()
	random := func(name string, dt gpu.DType, std float64, shape ...int) (*gpu.Tensor, error) {
		t, err := dev.NewTensor(dt, name, shape...)
		if err != nil {
			return nil, err
		}
		v := make([]float32, t.Len())
		for i := range v {
			if std == 0 {
				v[i] = 1
			} else {
				v[i] = float32(rng.NormFloat64() * std)
			}
		}
		if err := t.Upload(v); err != nil {
			t.Release()
			return nil, err
		}
		return t, nil
	}
	// draw is a random weight [out, in] on the host: quantized (w) when q's
	// groups divide in, else float values.
	draw := func(name string, out, in int) (w *gpu.AffineWeight, values []float32, err error) {
		values = make([]float32, out*in)
		for i := range values {
			values[i] = float32(rng.NormFloat64() * 0.02)
		}
		if q == nil || in%q.GroupSize != 0 {
			return nil, values, nil
		}
		if w, err = QuantizeAffine(values, out, in, *q, scales); err != nil {
			return nil, nil, fmt.Errorf("model: random %s [%d, %d]: %w", name, out, in, err)
		}
		return w, nil, nil
	}
	// matrix is a random weight [out, in] on the GPU.
	matrix := func(name string, out, in int) (*gpu.Tensor, error) {
		w, values, err := draw(name, out, in)
		switch {
		case err != nil:
			return nil, err
		case w != nil:
			return dev.NewAffineTensor(w, name)
		}
		t, err := dev.NewTensor(dtype, name, out, in)
		if err != nil {
			return nil, err
		}
		if err := t.Upload(values); err != nil {
			t.Release()
			return nil, err
		}
		return t, nil
	}
	var err error
	H, V := cfg.HiddenSize, cfg.VocabSize
	if cfg.EmbeddingOnHost(opts.HostEmbedding) {
		w, values, err := draw("embed_tokens", V, H)
		if err != nil {
			return nil, err
		}
		if m.HostEmbed, err = newEmbedding(dev, w, values, V, H, dtype); err != nil {
			return nil, fmt.Errorf("model: random embed_tokens: %w", err)
		}
	} else if m.Embed, err = matrix("embed_tokens", V, H); err != nil {
		return nil, err
	}
	if m.Norm, err = random("norm", gpu.F32, 0, H); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.Head = m.Embed
	} else if m.Head, err = matrix("lm_head", V, H); err != nil {
		return nil, err
	}
	shapes := ExpectedTensors(cfg)
	for i := range cfg.NumHiddenLayers {
		l := &Layer{}
		m.Layers = append(m.Layers, l)
		if l.InputNorm, err = random("input_layernorm", gpu.F32, 0, H); err != nil {
			return nil, err
		}
		if l.PostNorm, err = random("post_attention_layernorm", gpu.F32, 0, H); err != nil {
			return nil, err
		}
		for _, p := range Projections {
			name := fmt.Sprintf("model.layers.%d.%s.%s", i, p.Module(), p)
			shape := shapes[name+".weight"]
			w, err := matrix(name, shape[0], shape[1])
			if err != nil {
				return nil, err
			}
			var bias *gpu.Tensor
			if hasBias(cfg, p) {
				if bias, err = random(name+".bias", gpu.F32, 0.02, shapes[name+".bias"]...); err != nil {
					w.Release()
					return nil, err
				}
			}
			if l.Proj[p], err = NewLinear(dev, w, bias); err != nil {
				w.Release()
				bias.Release()
				return nil, err
			}
		}
	}
	if m.Rope, err = NewRopeTable(dev, cfg.InvFreq(), maxSeq); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}
