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

// checkpointTensor is a tensor a checkpoint must hold: its shape, and whether
// it is a quantized module's codes (U32) rather than floats.
type checkpointTensor struct {
	shape []int
	codes bool
	// problem, when set, is why the tensor cannot be loaded whatever it holds.
	problem string
}

// checkpointTensors is ExpectedTensors as the checkpoint stores them: a module
// that cfg.Quantization quantizes in ckpt has MLX's codes [out, in*bits/32]
// as <module>.weight, with <module>.scales and <module>.biases [out, in/G].
func checkpointTensors(cfg *Config, ckpt safetensors.Reader) map[string]checkpointTensor {
	want := map[string]checkpointTensor{}
	for name, shape := range ExpectedTensors(cfg) {
		want[name] = checkpointTensor{shape: shape}
	}
	for _, m := range QuantizableModules(cfg) {
		s := cfg.Quantization.For(m, holds(ckpt))
		if s == nil {
			continue
		}
		shape := want[m+".weight"].shape
		if shape[1]%s.GroupSize != 0 {
			want[m+".scales"] = checkpointTensor{problem: fmt.Sprintf("group size %d (config %s) does not divide the input size %d of %s.weight %v",
				s.GroupSize, cfg.Path, shape[1], m, shape)}
			delete(want, m+".weight") // its shape is moot: the problem above says why
			continue
		}
		w, sb := quantizedShapes(shape, *s)
		want[m+".weight"] = checkpointTensor{shape: w, codes: true}
		want[m+".scales"] = checkpointTensor{shape: sb}
		want[m+".biases"] = checkpointTensor{shape: sb}
	}
	return want
}

// holds says whether a checkpoint has a tensor.
func holds(ckpt safetensors.Reader) func(string) bool {
	return func(name string) bool {
		_, err := ckpt.Info(name)
		return err == nil
	}
}

// maxReportedProblems bounds the problems listed in one error: a checkpoint
// for the wrong model fails on every tensor, and the first few say enough.
const maxReportedProblems = 10

// CheckCheckpoint verifies that ckpt holds every tensor ExpectedTensors(cfg)
// lists, with that shape and a dtype the loader converts (F32, BF16, F16); a
// module the config quantizes must hold MLX's U32 codes, scales and biases
// instead (see checkpointTensors).
// Extra tensors, such as rotary inv_freq buffers, are ignored. The error lists
// each problem (up to ten) with the file and tensor it concerns.
func CheckCheckpoint(cfg *Config, ckpt safetensors.Reader) error {
	want := checkpointTensors(cfg, ckpt)
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	slices.Sort(names)

	var problems []error
	for _, name := range names {
		shape, codes := want[name].shape, want[name].codes
		info, err := ckpt.Info(name)
		switch {
		case want[name].problem != "":
			problems = append(problems, fmt.Errorf("%s: tensor %q: %s", ckpt.Path(), name, want[name].problem))
		case errors.Is(err, safetensors.ErrNotFound):
			problems = append(problems, fmt.Errorf("%s: tensor %q is missing (want shape %v)", ckpt.Path(), name, shape))
		case err != nil:
			problems = append(problems, err)
		case !slices.Equal(info.Shape, shape):
			problems = append(problems, fmt.Errorf("%s: tensor %q has shape %v, want %v", info.Path, name, info.Shape, shape))
		case codes && info.Dtype != safetensors.U32:
			problems = append(problems, fmt.Errorf("%s: tensor %q has dtype %s, want U32 (quantized codes, config %s)", info.Path, name, info.Dtype, cfg.Path))
		case !codes && !info.Dtype.IsFloat():
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
