package model

import (
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model/safetensors"
)

func TestCheckCheckpointFixtures(t *testing.T) {
	for _, dir := range hfFixtureModels(t) {
		t.Run(filepath.Base(filepath.Dir(dir))+"/"+filepath.Base(dir), func(t *testing.T) {
			cfg, err := LoadConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			ckpt, err := safetensors.OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ckpt.Close()
			if err := CheckCheckpoint(cfg, ckpt); err != nil {
				t.Fatal(err)
			}
			// The fixtures hold exactly the base model's tensors.
			want := ExpectedTensors(cfg)
			if got := slices.Sorted(maps.Keys(want)); !slices.Equal(got, ckpt.Names()) {
				t.Errorf("expected tensors %v\ncheckpoint holds %v", got, ckpt.Names())
			}
			_, hasLMHead := want["lm_head.weight"]
			if hasLMHead == cfg.TieWordEmbeddings {
				t.Errorf("lm_head.weight expected = %v with tie_word_embeddings = %v", hasLMHead, cfg.TieWordEmbeddings)
			}

			qDim, kvDim := cfg.NumAttentionHeads*cfg.HeadDim, cfg.NumKeyValueHeads*cfg.HeadDim
			reads := map[string][]int{
				"model.embed_tokens.weight":              {cfg.VocabSize, cfg.HiddenSize},
				"model.layers.0.self_attn.q_proj.weight": {qDim, cfg.HiddenSize},
				"model.layers.1.self_attn.k_proj.weight": {kvDim, cfg.HiddenSize},
				"model.layers.0.self_attn.o_proj.weight": {cfg.HiddenSize, qDim},
				"model.layers.1.mlp.down_proj.weight":    {cfg.HiddenSize, cfg.IntermediateSize},
				"model.norm.weight":                      {cfg.HiddenSize},
			}
			if cfg.AttentionBias {
				reads["model.layers.0.self_attn.v_proj.bias"] = []int{kvDim}
			}
			for name, shape := range reads {
				info, err := ckpt.Info(name)
				if err != nil {
					t.Fatal(err)
				}
				values, err := ckpt.ReadFloat32(name)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(info.Shape, shape) || int64(len(values)) != info.NumElements() {
					t.Errorf("%s: shape %v with %d values, want %v", name, info.Shape, len(values), shape)
				}
				// The fixtures' biases are HF's zero init; weights must not be.
				if !strings.HasSuffix(name, ".bias") && slices.Max(values) == 0 && slices.Min(values) == 0 {
					t.Errorf("%s: all zeros", name)
				}
			}
		})
	}
}

// TestBF16CheckpointAgreesWithF32 compares every weight of the bf16 fixture
// with the f32 one: rounding to bf16 (8 significant bits) moves a value by at
// most half a unit in the last place, which is at most 2^-8 relative.
func TestBF16CheckpointAgreesWithF32(t *testing.T) {
	root := hfFixturesDir(t)
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		f32, err := safetensors.OpenDir(filepath.Join(root, name, "model"))
		if err != nil {
			t.Fatal(err)
		}
		defer f32.Close()
		bf16, err := safetensors.OpenDir(filepath.Join(root, name, "model-bf16"))
		if err != nil {
			t.Fatal(err)
		}
		defer bf16.Close()
		for _, tensor := range f32.Names() {
			want, err := f32.ReadFloat32(tensor)
			if err != nil {
				t.Fatal(err)
			}
			got, err := bf16.ReadFloat32(tensor)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("%s %s: %d bf16 values, %d f32", name, tensor, len(got), len(want))
			}
			for i := range want {
				if math.Abs(float64(got[i]-want[i])) > math.Ldexp(math.Abs(float64(want[i])), -8) {
					t.Fatalf("%s %s[%d]: bf16 %v vs f32 %v", name, tensor, i, got[i], want[i])
				}
			}
		}
	}
}

// readAllTensors copies every tensor of a checkpoint for rewriting.
func readAllTensors(t *testing.T, ckpt safetensors.Reader) map[string]safetensors.Tensor {
	t.Helper()
	tensors := map[string]safetensors.Tensor{}
	for _, name := range ckpt.Names() {
		info, err := ckpt.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := ckpt.ReadRaw(name)
		if err != nil {
			t.Fatal(err)
		}
		tensors[name] = safetensors.Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
	}
	return tensors
}

// rewriteFixture copies a fixture's config and tensors to a new folder after
// edit has changed the tensors, and returns the config and opened checkpoint.
func rewriteFixture(t *testing.T, fixture string, edit func(map[string]safetensors.Tensor)) (*Config, safetensors.Reader, string) {
	t.Helper()
	src := filepath.Join(hfFixturesDir(t), fixture, "model")
	ckpt, err := safetensors.OpenDir(src)
	if err != nil {
		t.Fatal(err)
	}
	tensors := readAllTensors(t, ckpt)
	ckpt.Close()
	edit(tensors)

	dir := t.TempDir()
	config, err := os.ReadFile(filepath.Join(src, ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFileName), config, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, safetensors.SingleFileName)
	if err := safetensors.WriteFile(path, tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	return cfg, out, path
}

func wantCheckError(t *testing.T, cfg *Config, ckpt safetensors.Reader, fragments ...string) {
	t.Helper()
	err := CheckCheckpoint(cfg, ckpt)
	if err == nil {
		t.Fatalf("CheckCheckpoint passed, want an error mentioning %q", fragments)
	}
	for _, want := range fragments {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestCheckCheckpointWrongShape(t *testing.T) {
	const tensor = "model.layers.1.self_attn.k_proj.weight"
	cfg, ckpt, path := rewriteFixture(t, "llama-gqa", func(tensors map[string]safetensors.Tensor) {
		bad, err := safetensors.NewFloatTensor(safetensors.F32, []int{16, 64}, make([]float32, 16*64))
		if err != nil {
			t.Fatal(err)
		}
		tensors[tensor] = bad
	})
	wantCheckError(t, cfg, ckpt, path, `"`+tensor+`"`, "shape [16 64], want [32 64]")
}

func TestCheckCheckpointMissingTensor(t *testing.T) {
	cfg, ckpt, path := rewriteFixture(t, "qwen2-bias", func(tensors map[string]safetensors.Tensor) {
		delete(tensors, "model.layers.0.self_attn.q_proj.bias")
		delete(tensors, "model.norm.weight")
	})
	wantCheckError(t, cfg, ckpt, path, `"model.layers.0.self_attn.q_proj.bias" is missing`, `"model.norm.weight" is missing`)
}

func TestCheckCheckpointWrongDtype(t *testing.T) {
	const tensor = "model.layers.0.input_layernorm.weight"
	cfg, ckpt, path := rewriteFixture(t, "llama-gqa", func(tensors map[string]safetensors.Tensor) {
		tensors[tensor] = safetensors.Tensor{Dtype: "I32", Shape: []int{64}, Data: make([]byte, 4*64)}
	})
	wantCheckError(t, cfg, ckpt, path, `"`+tensor+`"`, "dtype I32")
}

func TestCheckCheckpointIgnoresExtras(t *testing.T) {
	cfg, ckpt, _ := rewriteFixture(t, "llama-gqa", func(tensors map[string]safetensors.Tensor) {
		extra, _ := safetensors.NewFloatTensor(safetensors.F32, []int{8}, make([]float32, 8))
		tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = extra
	})
	if err := CheckCheckpoint(cfg, ckpt); err != nil {
		t.Error(err)
	}
}

// TestCheckCheckpointWrongModel checks a config against another model's
// weights: every tensor is off, and the error stays short.
func TestCheckCheckpointWrongModel(t *testing.T) {
	root := hfFixturesDir(t)
	cfg, err := LoadConfig(filepath.Join(root, "llama-gqa", "model"))
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := safetensors.OpenDir(filepath.Join(root, "qwen2-bias", "model"))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	wantCheckError(t, cfg, ckpt, ckpt.Path(), cfg.Path, "more")
	if lines := strings.Count(CheckCheckpoint(cfg, ckpt).Error(), "\n"); lines > maxReportedProblems+1 {
		t.Errorf("error has %d lines, want at most %d", lines, maxReportedProblems+1)
	}
}

// TestCheckCheckpointSharded splits a fixture over two shards behind an index
// and checks it passes, and that a bad shape is reported against its shard.
func TestCheckCheckpointSharded(t *testing.T) {
	root := hfFixturesDir(t)
	src := filepath.Join(root, "qwen2-bias", "model")
	cfg, err := LoadConfig(src)
	if err != nil {
		t.Fatal(err)
	}
	single, err := safetensors.OpenDir(src)
	if err != nil {
		t.Fatal(err)
	}
	tensors := readAllTensors(t, single)
	single.Close()

	const badTensor = "model.layers.1.mlp.up_proj.weight"
	for _, corrupt := range []bool{false, true} {
		dir := t.TempDir()
		shards := []map[string]safetensors.Tensor{{}, {}}
		weightMap := map[string]string{}
		shardFile := func(i int) string {
			return []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i]
		}
		for i, name := range slices.Sorted(maps.Keys(tensors)) {
			tensor := tensors[name]
			if corrupt && name == badTensor {
				tensor, _ = safetensors.NewFloatTensor(safetensors.F32, []int{64, 160}, make([]float32, 64*160))
			}
			shards[i%2][name] = tensor
			weightMap[name] = shardFile(i % 2)
		}
		for i, shard := range shards {
			if err := safetensors.WriteFile(filepath.Join(dir, shardFile(i)), shard, nil); err != nil {
				t.Fatal(err)
			}
		}
		index, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
		if err := os.WriteFile(filepath.Join(dir, safetensors.IndexFileName), index, 0o644); err != nil {
			t.Fatal(err)
		}
		ckpt, err := safetensors.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer ckpt.Close()
		if !corrupt {
			if err := CheckCheckpoint(cfg, ckpt); err != nil {
				t.Error(err)
			}
			continue
		}
		wantCheckError(t, cfg, ckpt, filepath.Join(dir, weightMap[badTensor]), `"`+badTensor+`"`, "shape [64 160], want [160 64]")
	}
}

func TestExpectedTensorsBiases(t *testing.T) {
	cfg := &Config{Architecture: ArchLlama, VocabSize: 10, HiddenSize: 8, IntermediateSize: 12, NumHiddenLayers: 2,
		NumAttentionHeads: 4, NumKeyValueHeads: 1, HeadDim: 4, AttentionBias: true, OutputBias: true, MLPBias: true,
		TieWordEmbeddings: true}
	want := map[string][]int{
		"model.layers.1.self_attn.q_proj.weight": {16, 8},
		"model.layers.1.self_attn.k_proj.weight": {4, 8},
		"model.layers.1.self_attn.o_proj.weight": {8, 16},
		"model.layers.1.self_attn.q_proj.bias":   {16},
		"model.layers.1.self_attn.v_proj.bias":   {4},
		"model.layers.1.self_attn.o_proj.bias":   {8},
		"model.layers.0.mlp.up_proj.bias":        {12},
		"model.layers.0.mlp.down_proj.bias":      {8},
	}
	got := ExpectedTensors(cfg)
	for name, shape := range want {
		if !slices.Equal(got[name], shape) {
			t.Errorf("%s: %v, want %v", name, got[name], shape)
		}
	}
	// 2 + 2 layers * (2 norms + 7 weights + 3 qkv + 1 o + 3 mlp biases); tied, so no lm_head.
	if len(got) != 2+2*16 {
		t.Errorf("%d tensors, want %d", len(got), 2+2*16)
	}
}
