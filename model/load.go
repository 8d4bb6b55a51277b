package model

import (
	"fmt"
	"path/filepath"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/safetensors"
)

// Load reads an HF checkpoint directory (config.json plus model.safetensors or a
// sharded index) and uploads its weights to the device. Projection weights and
// the embedding/LM head are stored as dtype (F32, or BF16 to halve memory);
// norms and biases stay f32. Compute is f32 either way.
func Load(dev *gpu.Device, dir string, dtype gpu.DType) (*Model, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer ckpt.Close()
	if err := CheckCheckpoint(cfg, ckpt); err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, Dev: dev}
	ok := false
	defer func() {
		if !ok {
			m.Release()
		}
	}()
	upload := func(name string, dt gpu.DType) (*gpu.Tensor, error) {
		info, err := ckpt.Info(name)
		if err != nil {
			return nil, err
		}
		values, err := ckpt.ReadFloat32(name)
		if err != nil {
			return nil, err
		}
		t, err := dev.NewTensor(dt, name, info.Shape...)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", ckpt.Path(), name, err)
		}
		if err := t.Upload(values); err != nil {
			t.Release()
			return nil, fmt.Errorf("%s: tensor %s: %w", ckpt.Path(), name, err)
		}
		return t, nil
	}
	if m.Embed, err = upload("model.embed_tokens.weight", dtype); err != nil {
		return nil, err
	}
	if m.Norm, err = upload("model.norm.weight", gpu.F32); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.Head = m.Embed
	} else if m.Head, err = upload("lm_head.weight", dtype); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.NumHiddenLayers; i++ {
		l := &Layer{}
		m.Layers = append(m.Layers, l)
		prefix := fmt.Sprintf("model.layers.%d.", i)
		if l.InputNorm, err = upload(prefix+"input_layernorm.weight", gpu.F32); err != nil {
			return nil, err
		}
		if l.PostNorm, err = upload(prefix+"post_attention_layernorm.weight", gpu.F32); err != nil {
			return nil, err
		}
		for _, p := range Projections {
			name := prefix + p.Module() + "." + p.String()
			w, err := upload(name+".weight", dtype)
			if err != nil {
				return nil, err
			}
			var bias *gpu.Tensor
			if hasBias(cfg, p) {
				if bias, err = upload(name+".bias", gpu.F32); err != nil {
					w.Release()
					return nil, err
				}
			}
			if l.Proj[p], err = NewLinear(dev, w, bias); err != nil {
				w.Release()
				bias.Release()
				return nil, fmt.Errorf("%s: %s: %w", ckpt.Path(), name, err)
			}
		}
	}
	if m.Rope, err = NewRopeTable(dev, cfg.InvFreq(), cfg.MaxPositionEmbeddings); err != nil {
		return nil, err
	}
	ok = true
	return m, nil
}

// hasBias says whether the checkpoint has a bias for projection p (Qwen2's
// q/k/v, LLaMA's attention_bias on q/k/v/o, mlp_bias on gate/up/down).
func hasBias(cfg *Config, p Projection) bool {
	switch p {
	case ProjQ, ProjK, ProjV:
		return cfg.AttentionBias
	case ProjO:
		return cfg.OutputBias
	}
	return cfg.MLPBias
}
