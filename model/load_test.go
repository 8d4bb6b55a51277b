package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/safetensors"
)

func TestConfigSizeLimits(t *testing.T) {
	base := map[string]any{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
		"num_hidden_layers": 1, "num_attention_heads": 2}
	for _, c := range []struct {
		field string
		value int
		extra map[string]any
	}{
		{"num_hidden_layers", 1_000_000, nil},
		{"num_hidden_layers", MaxLayers + 1, nil},
		{"hidden_size", 1 << 20, nil},
		{"vocab_size", 100_000_000, nil},
		{"intermediate_size", 1 << 30, nil},
		{"num_attention_heads", 4096, map[string]any{"head_dim": 2}},
		{"head_dim", 1 << 16, nil},
		{"max_position_embeddings", 1 << 30, nil},
		{"num_key_value_heads", 4, nil},
	} {
		cfg := map[string]any{}
		for k, v := range base {
			cfg[k] = v
		}
		for k, v := range c.extra {
			cfg[k] = v
		}
		cfg[c.field] = c.value
		raw, _ := json.Marshal(cfg)
		start := time.Now()
		_, err := ParseConfig(raw, "big/config.json")
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", c.field)) || !strings.Contains(err.Error(), fmt.Sprint(c.value)) {
			t.Errorf("%s = %d: error %v, want one naming the field and the value", c.field, c.value, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s = %d: took %v to reject", c.field, c.value, d)
		}
	}
	// Real large models stay within the limits: Llama-3.1-405B's shape.
	big := `{"model_type": "llama", "vocab_size": 128256, "hidden_size": 16384, "intermediate_size": 53248,
		"num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8, "max_position_embeddings": 131072}`
	if _, err := ParseConfig([]byte(big), "405b.json"); err != nil {
		t.Errorf("Llama-3.1-405B's shape: %v", err)
	}
}

// checkpointCopy writes a copy of an HF fixture checkpoint to a temporary
// directory, with its config and tensors edited.
func checkpointCopy(t *testing.T, src string, editConfig func(map[string]any), editTensors func(map[string]safetensors.Tensor)) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(src, ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	editConfig(cfg)
	dir := t.TempDir()
	if raw, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFileName), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(src, safetensors.SingleFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tensors := map[string]safetensors.Tensor{}
	for _, name := range f.Names() {
		info, _ := f.Info(name)
		data, err := f.ReadRaw(name)
		if err != nil {
			t.Fatal(err)
		}
		tensors[name] = safetensors.Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
	}
	editTensors(tensors)
	if err := safetensors.WriteFile(filepath.Join(dir, safetensors.SingleFileName), tensors, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func verifyDir(t *testing.T, dir string) ([]string, error) {
	t.Helper()
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	return VerifyCheckpoint(cfg, ckpt)
}

func noEdit[T any](T) {}

func TestVerifyCheckpointFixturesAreClean(t *testing.T) {
	for _, dir := range hfFixtureModels(t) {
		if warnings, err := verifyDir(t, dir); err != nil || len(warnings) > 0 {
			t.Errorf("%s: warnings %q, error %v", dir, warnings, err)
		}
	}
}

func TestVerifyCheckpointRejectsLayersBeyondConfig(t *testing.T) {
	src := filepath.Join(hfFixturesDir(t), "llama-gqa", "model") // 3 layers
	dir := checkpointCopy(t, src, func(c map[string]any) { c["num_hidden_layers"] = 2 }, noEdit)
	_, err := verifyDir(t, dir)
	for _, want := range []string{"model.layers.2.", `"num_hidden_layers" is 2`, "drop 1 layer"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config with 2 of 3 layers: error %v, want one mentioning %q", err, want)
		}
	}
}

func TestVerifyCheckpointRejectsConfigLargerThanCheckpoint(t *testing.T) {
	src := filepath.Join(hfFixturesDir(t), "llama-gqa", "model")
	dir := checkpointCopy(t, src, func(c map[string]any) { c["num_hidden_layers"] = 1000 }, noEdit)
	_, err := verifyDir(t, dir)
	if err == nil || !strings.Contains(err.Error(), "num_hidden_layers 1000") || !strings.Contains(err.Error(), "holds only") {
		t.Errorf("config with 1000 layers over a 3-layer checkpoint: %v", err)
	}
}

func TestVerifyCheckpointWarnsAboutIgnoredTensors(t *testing.T) {
	// qwen2-bias ties its embeddings: an lm_head.weight is ignored, as
	// transformers ignores it, and said so.
	src := filepath.Join(hfFixturesDir(t), "qwen2-bias", "model")
	dir := checkpointCopy(t, src, noEdit, func(ts map[string]safetensors.Tensor) {
		ts["lm_head.weight"] = ts["model.embed_tokens.weight"]
	})
	warnings, err := verifyDir(t, dir)
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], `"lm_head.weight" is ignored`) || !strings.Contains(warnings[0], "tie_word_embeddings") {
		t.Errorf("tied config with lm_head.weight: warnings %q, error %v", warnings, err)
	}
	// llama-gqa has no biases: bias tensors would be ignored.
	src = filepath.Join(hfFixturesDir(t), "llama-gqa", "model")
	dir = checkpointCopy(t, src, noEdit, func(ts map[string]safetensors.Tensor) {
		bias, _ := safetensors.NewFloatTensor(safetensors.F32, []int{64}, make([]float32, 64))
		ts["model.layers.0.self_attn.o_proj.bias"] = bias
		ts["model.layers.0.self_attn.rotary_emb.inv_freq"], _ = safetensors.NewFloatTensor(safetensors.F32, []int{8}, make([]float32, 8))
	})
	warnings, err = verifyDir(t, dir)
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "model.layers.0.self_attn.o_proj.bias") || strings.Contains(warnings[0], "inv_freq") {
		t.Errorf("unused bias: warnings %q, error %v", warnings, err)
	}
}

// setValue overwrites element i of an F32 or BF16 tensor.
func setValue(t *testing.T, ts map[string]safetensors.Tensor, name string, i int, v float32) {
	t.Helper()
	tensor := ts[name]
	data := append([]byte(nil), tensor.Data...)
	switch tensor.Dtype {
	case safetensors.F32:
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	case safetensors.BF16:
		binary.LittleEndian.PutUint16(data[2*i:], uint16(math.Float32bits(v)>>16))
	default:
		t.Fatalf("%s: dtype %s", name, tensor.Dtype)
	}
	tensor.Data = data
	ts[name] = tensor
}

func TestLoadRejectsNonFiniteWeights(t *testing.T) {
	for _, c := range []struct {
		variant, tensor string
		value           float32
		want            string
	}{
		{"model", "model.layers.1.mlp.up_proj.weight", float32(math.NaN()), "NaN"},
		{"model-bf16", "model.layers.2.self_attn.k_proj.weight", float32(math.Inf(-1)), "-Inf"},
		{"model", "model.norm.weight", float32(math.Inf(1)), "+Inf"},
	} {
		src := filepath.Join(hfFixturesDir(t), "llama-gqa", c.variant)
		dir := checkpointCopy(t, src, noEdit, func(ts map[string]safetensors.Tensor) { setValue(t, ts, c.tensor, 37, c.value) })
		m, err := Load(testDevice, dir, gpu.F32)
		if err == nil {
			m.Release()
			t.Errorf("%s: loaded with %v in %s", c.variant, c.value, c.tensor)
			continue
		}
		for _, want := range []string{filepath.Join(dir, safetensors.SingleFileName), c.tensor, "element 37", c.want} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not mention %q", c.variant, err, want)
			}
		}
	}
}

func TestLoadWithWarnings(t *testing.T) {
	src := filepath.Join(hfFixturesDir(t), "qwen2-bias", "model")
	dir := checkpointCopy(t, src, noEdit, func(ts map[string]safetensors.Tensor) {
		ts["lm_head.weight"] = ts["model.embed_tokens.weight"]
	})
	m, warnings, err := LoadWithWarnings(testDevice, dir, gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if len(warnings) != 1 || m.Head != m.Embed {
		t.Errorf("warnings %q; head tied to the embedding: %v", warnings, m.Head == m.Embed)
	}
}
