package llamacpp

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
)

// configMetadata is the architecture part of a model's GGUF metadata (the
// keys llama.cpp's loader reads, with the types it checks).
func configMetadata(arch string, cfg *model.Config) ([]gguf.KV, error) {
	switch cfg.Rope.Type {
	case model.RopeDefault, "":
	case model.RopeLinear:
	case model.RopeLlama3: // as the rope_freqs.weight tensor (rope.go)
	default:
		return nil, fmt.Errorf("llamacpp: %s: rope type %q is not exported yet (default, linear and llama3 are)", cfg.Path, cfg.Rope.Type)
	}
	if cfg.OutputBias || cfg.MLPBias {
		return nil, fmt.Errorf("llamacpp: %s: attention_bias on o_proj or mlp_bias have no llama.cpp tensors", cfg.Path)
	}
	u := func(n int) uint32 { return uint32(n) }
	meta := []gguf.KV{
		{Key: arch + ".vocab_size", Value: u(cfg.VocabSize)},
		{Key: arch + ".context_length", Value: u(cfg.MaxPositionEmbeddings)},
		{Key: arch + ".embedding_length", Value: u(cfg.HiddenSize)},
		{Key: arch + ".block_count", Value: u(cfg.NumHiddenLayers)},
		{Key: arch + ".feed_forward_length", Value: u(cfg.IntermediateSize)},
		{Key: arch + ".attention.head_count", Value: u(cfg.NumAttentionHeads)},
		{Key: arch + ".attention.head_count_kv", Value: u(cfg.NumKeyValueHeads)},
		{Key: arch + ".attention.key_length", Value: u(cfg.HeadDim)},
		{Key: arch + ".attention.value_length", Value: u(cfg.HeadDim)},
		{Key: arch + ".rope.dimension_count", Value: u(cfg.HeadDim)},
		{Key: arch + ".attention.layer_norm_rms_epsilon", Value: float32(cfg.RMSNormEps)},
		{Key: arch + ".rope.freq_base", Value: float32(cfg.Rope.Theta)},
	}
	if cfg.Rope.Type == model.RopeLinear {
		meta = append(meta, gguf.KV{Key: arch + ".rope.scaling.type", Value: "linear"},
			gguf.KV{Key: arch + ".rope.scaling.factor", Value: float32(cfg.Rope.Factor)})
	}
	return meta, nil
}

// configJSON rebuilds an HF config.json from a GGUF model's metadata and
// tensors. Floats are written as the shortest decimal of their float32, so
// that exporting the result again gives the same metadata.
func configJSON(g *gguf.File) ([]byte, string, error) {
	arch, err := g.String("general.architecture")
	if err != nil {
		return nil, "", err
	}
	var modelType, class string
	switch arch {
	case archLlama:
		modelType, class = "llama", "LlamaForCausalLM"
	case archQwen2:
		modelType, class = "qwen2", "Qwen2ForCausalLM"
	default:
		return nil, "", fmt.Errorf("llamacpp: %s: general.architecture %q is not supported (llama, qwen2 are)", g.Path(), arch)
	}
	u := func(key string) (int, error) {
		v, err := g.Uint32(arch + "." + key)
		return int(v), err
	}
	f := func(key string) (json.Number, error) {
		v, err := g.Float32(arch + "." + key)
		return json.Number(strconv.FormatFloat(float64(v), 'g', -1, 32)), err
	}
	embd, ok := g.Tensor("token_embd.weight")
	if !ok || len(embd.Dims) != 2 {
		return nil, "", fmt.Errorf("llamacpp: %s: tensor \"token_embd.weight\" missing or not 2-D", g.Path())
	}
	c := map[string]any{"architectures": []string{class}, "model_type": modelType, "torch_dtype": "float32",
		"hidden_act": "silu", "vocab_size": embd.Dims[1]}
	var errs []error
	for key, field := range map[string]string{
		"context_length": "max_position_embeddings", "embedding_length": "hidden_size", "block_count": "num_hidden_layers",
		"feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
	} {
		v, err := u(key)
		errs = append(errs, err)
		c[field] = v
	}
	heads := c["num_attention_heads"].(int)
	kv := heads
	if g.Has(arch + ".attention.head_count_kv") {
		kv, err = u("attention.head_count_kv")
		errs = append(errs, err)
	}
	c["num_key_value_heads"] = kv
	if heads > 0 {
		c["head_dim"] = c["hidden_size"].(int) / heads
	}
	if g.Has(arch + ".attention.key_length") {
		v, err := u("attention.key_length")
		errs = append(errs, err)
		c["head_dim"] = v
	}
	eps, err := f("attention.layer_norm_rms_epsilon")
	errs = append(errs, err)
	c["rms_norm_eps"] = eps
	theta := json.Number("10000")
	if g.Has(arch + ".rope.freq_base") {
		theta, err = f("rope.freq_base")
		errs = append(errs, err)
	}
	c["rope_theta"] = theta
	if g.Has(arch + ".rope.scaling.type") {
		st, err := g.String(arch + ".rope.scaling.type")
		errs = append(errs, err)
		switch st {
		case "none":
		case "linear":
			factor, err := f("rope.scaling.factor")
			errs = append(errs, err)
			c["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": factor}
		default:
			return nil, "", fmt.Errorf("llamacpp: %s: %s.rope.scaling.type %q is not supported (none, linear are)", g.Path(), arch, st)
		}
	}
	for _, err := range errs {
		if err != nil {
			return nil, "", fmt.Errorf("llamacpp: %w", err)
		}
	}
	if info, ok := g.Tensor(ropeFreqsName); ok {
		if _, scaled := c["rope_scaling"]; scaled || info.Type != gguf.F32 || len(info.Dims) != 1 {
			return nil, "", fmt.Errorf("llamacpp: %s: tensor %q: want one F32 row and no %s.rope.scaling.type, have %s %v", g.Path(), ropeFreqsName, arch, info.Type, info.Dims)
		}
		factors, err := g.ReadFloat32(ropeFreqsName)
		if err != nil {
			return nil, "", err
		}
		thetaF, _ := theta.Float64()
		headDim, _ := c["head_dim"].(int)
		scaling, err := llama3Scaling(factors, headDim, thetaF)
		if err != nil {
			return nil, "", fmt.Errorf("llamacpp: %s: %w", g.Path(), err)
		}
		if scaling != nil {
			c["rope_scaling"] = scaling
		}
	}
	_, hasOutput := g.Tensor("output.weight")
	c["tie_word_embeddings"] = !hasOutput
	if arch == archLlama {
		_, qBias := g.Tensor("blk.0.attn_q.bias")
		c["attention_bias"] = qBias
	}
	for _, key := range []string{"bos", "eos", "padding"} {
		k := "tokenizer.ggml." + key + "_token_id"
		if g.Has(k) {
			id, err := g.Uint32(k)
			if err != nil {
				return nil, "", fmt.Errorf("llamacpp: %w", err)
			}
			name := key
			if key == "padding" {
				name = "pad"
			}
			c[name+"_token_id"] = id
		}
	}
	out, err := json.MarshalIndent(c, "", "  ")
	return out, arch, err
}
