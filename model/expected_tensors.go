// This file lists the tensors an HF checkpoint of a Config must hold and
// checks a checkpoint against that list before any weight is loaded.

package model

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sparselora/sparselora/model/safetensors"
)

// ExpectedTensors maps the HF name of every base-model tensor the config
// implies to its shape ([out, in] for projection weights). lm_head.weight is
// absent when the embeddings are tied.
func ExpectedTensors(cfg *Config) map[string][]int {
	h, inter, vocab := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize
	qDim := cfg.NumAttentionHeads * cfg.HeadDim
	kvDim := cfg.NumKeyValueHeads * cfg.HeadDim

	want := map[string][]int{
		"model.embed_tokens.weight": {vocab, h},
		"model.norm.weight":         {h},
	}
	if !cfg.TieWordEmbeddings {
		want["lm_head.weight"] = []int{vocab, h}
	}
	for i := range cfg.NumHiddenLayers {
		layer := fmt.Sprintf("model.layers.%d.", i)
		add := func(name string, shape ...int) { want[layer+name] = shape }
		add("input_layernorm.weight", h)
		add("post_attention_layernorm.weight", h)
		add("self_attn.q_proj.weight", qDim, h)
		add("self_attn.k_proj.weight", kvDim, h)
		add("self_attn.v_proj.weight", kvDim, h)
		add("self_attn.o_proj.weight", h, qDim)
		add("mlp.gate_proj.weight", inter, h)
		add("mlp.up_proj.weight", inter, h)
		add("mlp.down_proj.weight", h, inter)
		if cfg.AttentionBias {
			add("self_attn.q_proj.bias", qDim)
			add("self_attn.k_proj.bias", kvDim)
			add("self_attn.v_proj.bias", kvDim)
		}
		if cfg.OutputBias {
			add("self_attn.o_proj.bias", h)
		}
		if cfg.MLPBias {
			add("mlp.gate_proj.bias", inter)
			add("mlp.up_proj.bias", inter)
			add("mlp.down_proj.bias", h)
		}
	}
	return want
}

// maxReportedProblems bounds the problems listed in one error: a checkpoint
// for the wrong model fails on every tensor, and the first few say enough.
const maxReportedProblems = 10

// CheckCheckpoint verifies that ckpt holds every tensor ExpectedTensors(cfg)
// lists, with that shape and a dtype the loader converts (F32, BF16, F16).
// Extra tensors, such as rotary inv_freq buffers, are ignored. The error lists
// each problem (up to ten) with the file and tensor it concerns.
func CheckCheckpoint(cfg *Config, ckpt safetensors.Reader) error {
	want := ExpectedTensors(cfg)
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	slices.Sort(names)

	var problems []error
	for _, name := range names {
		shape := want[name]
		info, err := ckpt.Info(name)
		switch {
		case errors.Is(err, safetensors.ErrNotFound):
			problems = append(problems, fmt.Errorf("%s: tensor %q is missing (want shape %v)", ckpt.Path(), name, shape))
		case err != nil:
			problems = append(problems, err)
		case !slices.Equal(info.Shape, shape):
			problems = append(problems, fmt.Errorf("%s: tensor %q has shape %v, want %v", info.Path, name, info.Shape, shape))
		case !info.Dtype.IsFloat():
			problems = append(problems, fmt.Errorf("%s: tensor %q has dtype %s, want F32, BF16 or F16", info.Path, name, info.Dtype))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	if len(problems) > maxReportedProblems {
		more := len(problems) - maxReportedProblems
		problems = append(problems[:maxReportedProblems], fmt.Errorf("... and %d more", more))
	}
	return fmt.Errorf("model: checkpoint %s does not match config %s:\n%w", ckpt.Path(), cfg.Path, errors.Join(problems...))
}
