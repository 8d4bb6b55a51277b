package model

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model/safetensors"
)

// NamedTensors maps the Hugging Face name of every base-model tensor on the
// GPU to its tensor (lm_head.weight only when untied), the names of
// ExpectedTensors but model.embed_tokens.weight when the table is in host
// memory (HostEmbed).
func (m *Model) NamedTensors() map[string]*gpu.Tensor {
	out := map[string]*gpu.Tensor{"model.norm.weight": m.Norm}
	if m.Embed != nil {
		out["model.embed_tokens.weight"] = m.Embed
	}
	if !m.Config.TieWordEmbeddings {
		out["lm_head.weight"] = m.Head
	}
	for i, l := range m.Layers {
		prefix := fmt.Sprintf("model.layers.%d.", i)
		out[prefix+"input_layernorm.weight"] = l.InputNorm
		out[prefix+"post_attention_layernorm.weight"] = l.PostNorm
		for p, lin := range l.Proj {
			if lin == nil {
				continue
			}
			name := prefix + Projection(p).Module() + "." + Projection(p).String()
			out[name+".weight"] = lin.W
			if lin.Bias != nil {
				out[name+".bias"] = lin.Bias
			}
		}
	}
	return out
}

// Save writes the model as a Hugging Face checkpoint directory: config.json
// (configJSON, the text to write) and model.safetensors with every weight in
// f32 or bf16 (dtype), downloaded from the GPU. Files are written atomically.
func (m *Model) Save(ctx context.Context, dir string, configJSON []byte, dtype safetensors.Dtype) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tensors := map[string]safetensors.Tensor{}
	for name, t := range m.NamedTensors() {
		values, err := t.Download(ctx)
		if err != nil {
			return fmt.Errorf("saving %s: %w", name, err)
		}
		enc, err := safetensors.NewFloatTensor(dtype, t.Shape, values)
		if err != nil {
			return fmt.Errorf("saving %s: %w", name, err)
		}
		tensors[name] = enc
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, ConfigFileName), configJSON)
}

// companionFiles are the files of an HF model directory besides config.json
// and the weights: the tokenizer and the generation defaults.
var companionFiles = []string{
	"generation_config.json",
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
	"added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
}

// CopyCompanions copies whichever companion files (tokenizer, generation
// config) src holds into dst, atomically each, and returns their names, so a
// checkpoint written from a model loads with its tokenizer.
func CopyCompanions(src, dst string) ([]string, error) {
	var copied []string
	for _, name := range companionFiles {
		data, err := os.ReadFile(filepath.Join(src, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(filepath.Join(dst, name), data); err != nil {
			return nil, err
		}
		copied = append(copied, name)
	}
	return copied, nil
}
