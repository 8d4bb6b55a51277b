package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
)

// hfFixturesDir is the folder of the Hugging Face fixtures.
func hfFixturesDir(t *testing.T) string { return filepath.Join(fixtures.Dir(t), "hf") }

// hfFixtureModels lists the fixture checkpoint folders.
func hfFixtureModels(t *testing.T) []string {
	root := hfFixturesDir(t)
	var dirs []string
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		for _, variant := range []string{"model", "model-bf16"} {
			dirs = append(dirs, filepath.Join(root, name, variant))
		}
	}
	return dirs
}

// TestFixtureConfigs checks every field against the JSON, read independently.
func TestFixtureConfigs(t *testing.T) {
	for _, dir := range hfFixtureModels(t) {
		t.Run(filepath.Base(filepath.Dir(dir))+"/"+filepath.Base(dir), func(t *testing.T) {
			cfg, err := LoadConfig(dir) // a directory finds its config.json
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, ConfigFileName)
			if cfg.Path != path {
				t.Errorf("Path = %s, want %s", cfg.Path, path)
			}
			var raw map[string]any
			data, _ := os.ReadFile(path)
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			num := func(key string) int { return int(raw[key].(float64)) }
			ints := map[string][2]int{
				"vocab_size":              {cfg.VocabSize, num("vocab_size")},
				"hidden_size":             {cfg.HiddenSize, num("hidden_size")},
				"intermediate_size":       {cfg.IntermediateSize, num("intermediate_size")},
				"num_hidden_layers":       {cfg.NumHiddenLayers, num("num_hidden_layers")},
				"num_attention_heads":     {cfg.NumAttentionHeads, num("num_attention_heads")},
				"num_key_value_heads":     {cfg.NumKeyValueHeads, num("num_key_value_heads")},
				"max_position_embeddings": {cfg.MaxPositionEmbeddings, num("max_position_embeddings")},
			}
			for key, pair := range ints {
				if pair[0] != pair[1] {
					t.Errorf("%s = %d, want %d", key, pair[0], pair[1])
				}
			}
			wantHeadDim := num("hidden_size") / num("num_attention_heads")
			if _, ok := raw["head_dim"]; ok {
				wantHeadDim = num("head_dim")
			}
			rope := raw["rope_parameters"].(map[string]any)
			if cfg.HeadDim != wantHeadDim || cfg.RMSNormEps != raw["rms_norm_eps"].(float64) ||
				cfg.TieWordEmbeddings != raw["tie_word_embeddings"].(bool) ||
				cfg.Rope.Type != RopeDefault || cfg.Rope.Theta != rope["rope_theta"].(float64) {
				t.Errorf("config %+v does not match %s", cfg, path)
			}

			switch raw["model_type"] {
			case "llama":
				if cfg.Architecture != ArchLlama || cfg.AttentionBias || cfg.OutputBias || cfg.MLPBias ||
					cfg.BOSTokenID == nil || *cfg.BOSTokenID != 1 || !slices.Equal(cfg.EOSTokenIDs, []int{2}) || cfg.PadTokenID != nil {
					t.Errorf("llama config: %+v", cfg)
				}
			case "qwen2":
				if cfg.Architecture != ArchQwen2 || !cfg.AttentionBias || cfg.OutputBias || cfg.MLPBias ||
					cfg.BOSTokenID != nil || cfg.EOSTokenIDs != nil || cfg.PadTokenID != nil {
					t.Errorf("qwen2 config: %+v", cfg)
				}
			default:
				t.Fatalf("unexpected fixture model_type %v", raw["model_type"])
			}

			inv := cfg.InvFreq()
			if len(inv) != cfg.HeadDim/2 || inv[0] != 1 {
				t.Errorf("InvFreq() = %v", inv)
			}
			for i, f := range inv {
				if want := math.Pow(cfg.Rope.Theta, -float64(2*i)/float64(cfg.HeadDim)); math.Abs(f-want) > 1e-15*want {
					t.Errorf("InvFreq()[%d] = %v, want %v", i, f, want)
				}
			}
		})
	}
}

// writeConfig writes a config.json into a new temporary folder.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), ConfigFileName)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// llama31Body is the shape of Llama-3.1-8B's config.json (transformers 4
// layout) without the closing brace, so tests can append fields.
const llama31Body = `{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 128256,
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "num_hidden_layers": 32,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "max_position_embeddings": 131072,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "tie_word_embeddings": false`

// llama3InvFreqReference computes Llama 3.1's scaled frequencies the way
// Meta's reference code (apply_scaling) writes them, with the base
// frequencies from exp/log rather than Pow.
func llama3InvFreqReference(theta float64, dim int, factor, low, high, oldContext float64) []float64 {
	out := make([]float64, dim/2)
	for i := range out {
		freq := math.Exp(-math.Log(theta) * float64(2*i) / float64(dim))
		wavelen := 2 * math.Pi / freq
		switch {
		case wavelen < oldContext/high:
			out[i] = freq
		case wavelen > oldContext/low:
			out[i] = freq / factor
		default:
			smooth := (oldContext/wavelen - low) / (high - low)
			out[i] = (1-smooth)*freq/factor + smooth*freq
		}
	}
	return out
}

func compareInvFreq(t *testing.T, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("InvFreq has %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-12*want[i] {
			t.Errorf("InvFreq()[%d] = %.17g, want %.17g", i, got[i], want[i])
		}
	}
}

func TestConfigTransformers4Llama3(t *testing.T) {
	path := writeConfig(t, llama31Body+`,
  "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}
}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	wantRope := Rope{Type: RopeLlama3, Theta: 500000, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}
	if cfg.Rope != wantRope || cfg.HeadDim != 128 || cfg.NumKeyValueHeads != 8 ||
		!slices.Equal(cfg.EOSTokenIDs, []int{128001, 128008, 128009}) || *cfg.BOSTokenID != 128000 {
		t.Errorf("config = %+v", cfg)
	}
	inv := cfg.InvFreq()
	compareInvFreq(t, inv, llama3InvFreqReference(500000, 128, 8, 1, 4, 8192))
	// The three regimes all occur: unchanged, interpolated, divided by 8.
	if inv[0] != 1 {
		t.Errorf("highest frequency changed: %v", inv[0])
	}
	last := math.Pow(500000, -126.0/128) / 8
	if math.Abs(inv[63]-last) > 1e-12*last {
		t.Errorf("lowest frequency %v, want %v", inv[63], last)
	}
}

// TestConfigTransformers5Llama3 writes the same model in the transformers 5
// layout and expects the same result.
func TestConfigTransformers5Llama3(t *testing.T) {
	path := writeConfig(t, llama31Body+`,
  "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}
}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	compareInvFreq(t, cfg.InvFreq(), llama3InvFreqReference(500000, 128, 8, 1, 4, 8192))
}

func TestConfigLinearRope(t *testing.T) {
	// The legacy "type" key, as old configs (e.g. Vicuna-16k-style) spell it.
	path := writeConfig(t, llama31Body+`,
  "rope_theta": 10000.0,
  "rope_scaling": {"type": "linear", "factor": 4.0}
}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rope.Type != RopeLinear || cfg.Rope.Factor != 4 {
		t.Fatalf("rope = %+v", cfg.Rope)
	}
	want := make([]float64, 64)
	for i := range want {
		want[i] = math.Exp(-math.Log(10000)*float64(2*i)/128) / 4
	}
	compareInvFreq(t, cfg.InvFreq(), want)
}

func TestConfigDefaults(t *testing.T) {
	path := writeConfig(t, `{"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
		"intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
		"sliding_window": 4096, "rope_scaling": null, "eos_token_id": 2, "pad_token_id": null}`)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != ArchMistral || cfg.NumKeyValueHeads != 32 || cfg.HeadDim != 128 ||
		cfg.RMSNormEps != 1e-6 || cfg.MaxPositionEmbeddings != 131072 || cfg.TieWordEmbeddings ||
		cfg.SlidingWindow != 4096 || cfg.Rope != (Rope{Type: RopeDefault, Theta: 10000}) ||
		!slices.Equal(cfg.EOSTokenIDs, []int{2}) || cfg.PadTokenID != nil || cfg.BOSTokenID != nil {
		t.Errorf("defaults: %+v", cfg)
	}

	// LLaMA's attention_bias adds biases to all four attention projections;
	// architectures alone identifies the model.
	path = writeConfig(t, `{"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
		"intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 6,
		"attention_bias": true, "tie_word_embeddings": true}`)
	cfg, err = LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != ArchLlama || !cfg.AttentionBias || !cfg.OutputBias || cfg.MLPBias || cfg.HeadDim != 6 || !cfg.TieWordEmbeddings {
		t.Errorf("llama with attention_bias: %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	base := func(extra string) string {
		return `{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
			"num_hidden_layers": 1, "num_attention_heads": 2` + extra + `}`
	}
	cases := []struct {
		name, text string
		want       []string // fragments the error must contain besides the path
	}{
		{"unknown model_type", strings.Replace(base(""), `"llama"`, `"gemma"`, 1), []string{`"model_type"`, `"gemma"`}},
		{"unknown architecture", base(`, "architectures": ["GPT2LMHeadModel"]`), []string{`"architectures"`, "GPT2LMHeadModel"}},
		{"architecture mismatch", base(`, "architectures": ["Qwen2ForCausalLM"]`), []string{`"architectures"`, "does not match"}},
		{"no model_type", `{"vocab_size": 10}`, []string{`"model_type"`, "missing"}},
		{"missing hidden_size", strings.Replace(base(""), `"hidden_size": 8,`, "", 1), []string{`"hidden_size"`, "missing"}},
		{"string size", strings.Replace(base(""), `"hidden_size": 8`, `"hidden_size": "8"`, 1), []string{`"hidden_size"`, "want a number"}},
		{"fractional size", strings.Replace(base(""), `"hidden_size": 8`, `"hidden_size": 8.5`, 1), []string{`"hidden_size"`, "integer"}},
		{"zero layers", strings.Replace(base(""), `"num_hidden_layers": 1`, `"num_hidden_layers": 0`, 1), []string{`"num_hidden_layers"`, "positive"}},
		{"kv heads do not divide", base(`, "num_key_value_heads": 3`), []string{`"num_key_value_heads"`, "divide"}},
		{"heads do not divide hidden", base(`, "num_attention_heads": 3`), []string{`"num_attention_heads"`}},
		{"odd head_dim", base(`, "head_dim": 5`), []string{`"head_dim"`, "even"}},
		{"bad eps", base(`, "rms_norm_eps": 0`), []string{`"rms_norm_eps"`}},
		{"gelu", base(`, "hidden_act": "gelu"`), []string{`"hidden_act"`, "gelu"}},
		{"bad eos", base(`, "eos_token_id": [1, "x"]`), []string{`"eos_token_id[1]"`}},
		{"bool as string", base(`, "tie_word_embeddings": "yes"`), []string{`"tie_word_embeddings"`}},
		{"yarn", base(`, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}`), []string{`"rope_scaling.rope_type"`, "yarn"}},
		{"dynamic legacy", base(`, "rope_scaling": {"type": "dynamic", "factor": 2.0}`), []string{`"rope_scaling.type"`, "dynamic"}},
		{"t5 unknown type", base(`, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}`), []string{`"rope_parameters.rope_type"`, "longrope"}},
		{"llama3 without low_freq_factor", base(`, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}`),
			[]string{`"rope_parameters.low_freq_factor"`, "missing"}},
		{"llama3 bad factors", base(`, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}`),
			[]string{`"rope_scaling.high_freq_factor"`}},
		{"linear without factor", base(`, "rope_scaling": {"rope_type": "linear"}`), []string{`"rope_scaling.factor"`, "missing"}},
		{"linear factor below 1", base(`, "rope_scaling": {"rope_type": "linear", "factor": 0.5}`), []string{`"rope_scaling.factor"`}},
		{"negative theta", base(`, "rope_theta": -1`), []string{`"rope_theta"`}},
		{"partial rotary", base(`, "partial_rotary_factor": 0.5`), []string{`"partial_rotary_factor"`}},
		{"rope_scaling not an object", base(`, "rope_scaling": 3`), []string{`"rope_scaling"`}},
		{"mistral bias", strings.Replace(base(`, "attention_bias": true`), `"llama"`, `"mistral"`, 1), []string{`"attention_bias"`}},
		{"qwen2 sliding window", strings.Replace(base(`, "use_sliding_window": true`), `"llama"`, `"qwen2"`, 1), []string{`"use_sliding_window"`}},
		{"sliding layer type", base(`, "layer_types": ["sliding_attention"]`), []string{`"layer_types"`}},
		{"malformed JSON", `{"model_type": "llama",`, []string{"malformed config"}},
		{"not an object", `[1, 2]`, []string{"malformed config"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, c.text)
			cfg, err := LoadConfig(path)
			if err == nil {
				t.Fatalf("LoadConfig succeeded: %+v", cfg)
			}
			for _, want := range append([]string{path}, c.want...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), ConfigFileName)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadConfig(missing) = %v, want an error naming %s", err, path)
	}
}

func TestValidateHandBuiltConfig(t *testing.T) {
	cfg := &Config{Architecture: ArchLlama, VocabSize: 10, HiddenSize: 8, IntermediateSize: 16, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 2, HeadDim: 4, RMSNormEps: 1e-5, MaxPositionEmbeddings: 64,
		Rope: Rope{Type: RopeDefault, Theta: 10000}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Rope.Type = "ntk"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "rope_type") {
		t.Errorf("Validate with rope type ntk = %v", err)
	}
}
