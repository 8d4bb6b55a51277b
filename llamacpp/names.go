package llamacpp

import (
	"fmt"
	"regexp"
	"strconv"

	"github.com/sparselora/sparselora/model"
)

// GGUF architecture names.
const (
	archLlama = "llama" // LLaMA and Mistral
	archQwen2 = "qwen2"
)

// ggufArch is the llama.cpp architecture of an HF config.
func ggufArch(cfg *model.Config) (string, error) {
	switch cfg.Architecture {
	case model.ArchLlama, model.ArchMistral:
		return archLlama, nil
	case model.ArchQwen2:
		return archQwen2, nil
	}
	return "", fmt.Errorf("llamacpp: %s: architecture %q has no GGUF mapping (llama, mistral, qwen2 do)", cfg.Path, cfg.Architecture)
}

// projectionNames maps HF module paths inside a decoder layer onto
// llama.cpp's tensor stems.
var projectionNames = map[string]string{
	"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
	"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
	"mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}

var hfLayerTensor = regexp.MustCompile(`^model\.layers\.(\d+)\.([a-z_]+(?:\.[a-z_]+)?)\.(weight|bias)$`)

// ggufName is the llama.cpp name of an HF tensor, or false for a tensor
// llama.cpp has no place for.
func ggufName(hf string) (string, bool) {
	switch hf {
	case "model.embed_tokens.weight":
		return "token_embd.weight", true
	case "model.norm.weight":
		return "output_norm.weight", true
	case "lm_head.weight":
		return "output.weight", true
	}
	m := hfLayerTensor.FindStringSubmatch(hf)
	if m == nil {
		return "", false
	}
	stem, ok := projectionNames[m[2]]
	if !ok {
		return "", false
	}
	return "blk." + m[1] + "." + stem + "." + m[3], true
}

var ggufLayerTensor = regexp.MustCompile(`^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$`)

// hfName is the HF name of a llama.cpp tensor, or false.
func hfName(g string) (string, bool) {
	switch g {
	case "token_embd.weight":
		return "model.embed_tokens.weight", true
	case "output_norm.weight":
		return "model.norm.weight", true
	case "output.weight":
		return "lm_head.weight", true
	}
	m := ggufLayerTensor.FindStringSubmatch(g)
	if m == nil {
		return "", false
	}
	if _, err := strconv.Atoi(m[1]); err != nil {
		return "", false
	}
	for module, stem := range projectionNames {
		if stem == m[2] {
			return "model.layers." + m[1] + "." + module + "." + m[3], true
		}
	}
	return "", false
}

// rotaryHeads is the number of heads whose rows the llama architecture
// permutes in tensor hf (q: attention heads, k: key/value heads), or 0.
func rotaryHeads(arch, hf string, cfg *model.Config) int {
	if arch != archLlama {
		return 0 // qwen2 runs NEOX rotary on HF's layout
	}
	m := hfLayerTensor.FindStringSubmatch(hf)
	if m == nil {
		return 0
	}
	switch m[2] {
	case "self_attn.q_proj":
		return cfg.NumAttentionHeads
	case "self_attn.k_proj":
		return cfg.NumKeyValueHeads
	}
	return 0
}

// permuteRows reorders the rows of a [heads*hd, cols] matrix for llama.cpp's
// rotary layout (convert_hf_to_gguf.py's LlamaModel.permute): within each
// head, new row 2j+t is old row t*hd/2+j. inverse undoes it.
func permuteRows[T any](values []T, heads, cols int, inverse bool) ([]T, error) {
	rows := len(values) / max(cols, 1)
	if heads <= 0 || rows*cols != len(values) || rows%heads != 0 || (rows/heads)%2 != 0 {
		return nil, fmt.Errorf("cannot permute %d values as %d heads of rows of %d", len(values), heads, cols)
	}
	hd := rows / heads
	out := make([]T, len(values))
	for h := 0; h < heads; h++ {
		for j := 0; j < hd/2; j++ {
			for t := 0; t < 2; t++ {
				newRow, oldRow := h*hd+2*j+t, h*hd+t*hd/2+j
				dst, src := newRow, oldRow
				if inverse {
					dst, src = oldRow, newRow
				}
				copy(out[dst*cols:(dst+1)*cols], values[src*cols:(src+1)*cols])
			}
		}
	}
	return out, nil
}
