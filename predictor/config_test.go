package predictor

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
)

// paperTables is testdata/paper-sparsity-tables.json (a copy of the shared file): the paper's Table 12
// as the shipped YAML files must reproduce it.
type paperTables struct {
	Configs map[string]struct {
		NumLayers        int                `json:"num_layers"`
		Mode             string             `json:"mode"`
		StartStep        float64            `json:"start_step"`
		SkipOutputTokens bool               `json:"skip_output_tokens"`
		Sparsity         map[string]float64 `json:"sparsity"`
	} `json:"configs"`
}

func loadPaperTables(t *testing.T) paperTables {
	t.Helper()
	path := filepath.Join(fixtures.Dir(t), "..", "paper-sparsity-tables.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tables paperTables
	if err := json.Unmarshal(data, &tables); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(tables.Configs) != 14 {
		t.Fatalf("%s: %d configs, want the paper's 14", path, len(tables.Configs))
	}
	return tables
}

// llamaShapedConfig is a LLaMA-7B/8B-sized architecture with the given layer
// count, enough for Validate and the FLOP counts.
func llamaShapedConfig(layers int) *model.Config {
	return &model.Config{
		Path: "test config", Architecture: model.ArchLlama,
		VocabSize: 128256, HiddenSize: 4096, IntermediateSize: 14336, NumHiddenLayers: layers,
		NumAttentionHeads: 32, NumKeyValueHeads: 8, HeadDim: 128,
	}
}

func TestBuiltinSparsityConfigsMatchPaperTables(t *testing.T) {
	tables := loadPaperTables(t)

	wantNames := []string{"dense"}
	for name := range tables.Configs {
		wantNames = append(wantNames, name)
	}
	slices.Sort(wantNames)
	if got := BuiltinSparsityConfigNames(); !slices.Equal(got, wantNames) {
		t.Fatalf("BuiltinSparsityConfigNames() = %v, want %v", got, wantNames)
	}

	for name, want := range tables.Configs {
		t.Run(name, func(t *testing.T) {
			got, err := BuiltinSparsityConfig(name)
			if err != nil {
				t.Fatal(err)
			}
			if got.Mode != want.Mode || got.StartStep != want.StartStep || got.SkipOutputTokens != want.SkipOutputTokens {
				t.Errorf("mode %q start_step %g skip_output_tokens %v, want %q %g %v",
					got.Mode, got.StartStep, got.SkipOutputTokens, want.Mode, want.StartStep, want.SkipOutputTokens)
			}
			wantRank := 0
			if r, ok := strings.CutPrefix(want.Mode, "svd_"); ok {
				wantRank, _ = strconv.Atoi(r)
			}
			if got.Rank != wantRank || got.Dense != (want.Mode == "dense") {
				t.Errorf("rank %d dense %v, want %d %v", got.Rank, got.Dense, wantRank, want.Mode == "dense")
			}
			for layer := range want.NumLayers {
				wantLayer := LayerSparsity{
					MLP:       want.Sparsity["layers."+strconv.Itoa(layer)+".mlp"],
					Attention: want.Sparsity["layers."+strconv.Itoa(layer)+".self_attn"],
				}
				if got.Layer(layer) != wantLayer {
					t.Errorf("layer %d: %+v, want %+v", layer, got.Layer(layer), wantLayer)
				}
			}
			for layer := range got.Layers {
				if layer >= want.NumLayers {
					t.Errorf("lists layer %d of a %d-layer model", layer, want.NumLayers)
				}
			}
			if err := got.Validate(llamaShapedConfig(want.NumLayers)); err != nil {
				t.Errorf("Validate against %d layers: %v", want.NumLayers, err)
			}
			if got.HasSparseLayers() != (len(want.Sparsity) > 0) {
				t.Errorf("HasSparseLayers() = %v with %d entries", got.HasSparseLayers(), len(want.Sparsity))
			}
		})
	}
}

// The example the spec gives for the headline table, spelled out.
func TestBuiltinSparsityConfigLlama3Math10K(t *testing.T) {
	cfg, err := BuiltinSparsityConfig("llama3-8b-math10k")
	if err != nil {
		t.Fatal(err)
	}
	attentionLayers := []int{14, 15, 16, 17, 18, 19, 21, 22, 23, 25, 26, 27, 28, 29}
	for layer := range 32 {
		want := LayerSparsity{}
		if layer >= 3 && layer <= 30 {
			want.MLP = 0.99
		}
		if slices.Contains(attentionLayers, layer) {
			want.Attention = 0.75
		}
		if cfg.Layer(layer) != want {
			t.Errorf("layer %d: %+v, want %+v", layer, cfg.Layer(layer), want)
		}
	}
	if cfg.Rank != 8 || cfg.StartStep != 0.05 || !cfg.SkipOutputTokens || cfg.Source != "configs/sparsity/llama3-8b-math10k.yaml" {
		t.Errorf("got %+v", cfg)
	}
}

func TestBuiltinSparsityConfigDense(t *testing.T) {
	cfg, err := BuiltinSparsityConfig("dense")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Dense || cfg.Rank != 0 || len(cfg.Layers) != 0 || cfg.HasSparseLayers() || cfg.SparseAtStep(100, 100) {
		t.Errorf("dense config: %+v", cfg)
	}
	if err := cfg.Validate(llamaShapedConfig(1)); err != nil {
		t.Error(err)
	}
}

func TestBuiltinSparsityConfigUnknownName(t *testing.T) {
	_, err := BuiltinSparsityConfig("llama9-1t-math")
	if err == nil || !strings.Contains(err.Error(), `"llama9-1t-math"`) || !strings.Contains(err.Error(), "llama3-8b-math10k") {
		t.Errorf("got %v, want an error naming the config and the available ones", err)
	}
}

// The reference's own files carry capitalised booleans, quoted modes, integer
// zeros and summary strings; they must load unchanged.
func TestParseSparsityConfigReferenceFormat(t *testing.T) {
	const reference = `
#* General Settings
start_step: 0.05
mode: "svd_8"
skip_output_tokens: True
ffn_sparsity: "ffn=0.99x28"
qkvo_sparsity: "qkv=0.75x14"
#* Layer-wise Sparsity
sparsity:
  layers.0.mlp: 0
  layers.0.self_attn: 0
  layers.3.mlp: 0.99
  layers.3.self_attn: 0
  layers.14.mlp: 0.99
  layers.14.self_attn: 0.75
`
	cfg, err := ParseSparsityConfig([]byte(reference), "ref.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]LayerSparsity{0: {}, 3: {MLP: 0.99}, 14: {MLP: 0.99, Attention: 0.75}}
	if len(cfg.Layers) != len(want) {
		t.Errorf("layers %v, want %v", cfg.Layers, want)
	}
	for layer, s := range want {
		if cfg.Layers[layer] != s {
			t.Errorf("layer %d: %+v, want %+v", layer, cfg.Layers[layer], s)
		}
	}
	if cfg.Mode != "svd_8" || cfg.Rank != 8 || cfg.Dense || !cfg.SkipOutputTokens || cfg.StartStep != 0.05 {
		t.Errorf("got %+v", cfg)
	}
	if cfg.Layer(5) != (LayerSparsity{}) {
		t.Errorf("unlisted layer 5: %+v, want dense", cfg.Layer(5))
	}
}

// The reference's dense files leave start_step and skip_output_tokens out and
// list every layer at 0.
func TestParseSparsityConfigDefaults(t *testing.T) {
	cfg, err := ParseSparsityConfig([]byte("mode: \"dense\"\nsparsity:\n  layers.0.mlp: 0\n  layers.0.self_attn: 0\n"), "d.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Dense || cfg.StartStep != 0 || cfg.SkipOutputTokens || cfg.HasSparseLayers() {
		t.Errorf("got %+v", cfg)
	}
	for _, text := range []string{"mode: svd_16\nsparsity:\n", "mode: svd_16\nsparsity: {}\n"} {
		cfg, err := ParseSparsityConfig([]byte(text), "e.yaml")
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if cfg.Rank != 16 || len(cfg.Layers) != 0 {
			t.Errorf("%q: got %+v", text, cfg)
		}
	}
}

func TestParseSparsityConfigErrors(t *testing.T) {
	const valid = "mode: svd_8\nsparsity:\n  layers.1.mlp: 0.5\n"
	cases := []struct {
		name, text string
		want       []string // substrings of the error, besides the file name
	}{
		{"empty", "", []string{"empty"}},
		{"not a mapping", "- 1\n- 2\n", []string{"mapping"}},
		{"malformed yaml", "mode: [svd_8\n", []string{"malformed YAML"}},
		{"two documents", valid + "---\n" + valid, []string{":4:", "more than one"}},
		{"unknown top-level key", valid + "end_step: 0.9\n", []string{":4:", `"end_step"`, "unknown key"}},
		{"duplicate top-level key", valid + "mode: svd_4\n", []string{":4:", `"mode"`, "duplicate", "line 1"}},
		{"duplicate layer key", valid + "  layers.1.mlp: 0.6\n", []string{":4:", `"layers.1.mlp"`, "duplicate", "line 3"}},
		{"missing mode", "sparsity: {}\n", []string{`"mode"`, "missing"}},
		{"missing sparsity", "mode: dense\n", []string{`"sparsity"`, "missing"}},
		{"bad mode", "mode: svd\nsparsity: {}\n", []string{":1:", `"mode"`, `"svd"`}},
		{"zero rank", "mode: svd_0\nsparsity: {}\n", []string{":1:", `"svd_0"`}},
		{"signed rank", "mode: svd_+8\nsparsity: {}\n", []string{":1:", `"svd_+8"`}},
		{"unknown mode", "mode: oracle\nsparsity: {}\n", []string{":1:", `"oracle"`}},
		{"mode not a string", "mode: 8\nsparsity: {}\n", []string{":1:", `"mode"`}},
		{"negative start_step", "start_step: -0.1\n" + valid, []string{":1:", `"start_step"`, "negative"}},
		{"start_step string", "start_step: \"0.1\"\n" + valid, []string{":1:", `"start_step"`, "number"}},
		{"start_step nan", "start_step: .nan\n" + valid, []string{":1:", `"start_step"`, "finite"}},
		{"skip_output_tokens not bool", "skip_output_tokens: 1\n" + valid, []string{":1:", `"skip_output_tokens"`}},
		{"sparsity a list", "mode: svd_8\nsparsity:\n  - 0.5\n", []string{":2:", `"sparsity"`, "mapping"}},
		{"malformed layer key", "mode: svd_8\nsparsity:\n  layer.1.mlp: 0.5\n", []string{":3:", `"layer.1.mlp"`, "malformed"}},
		{"missing kind", "mode: svd_8\nsparsity:\n  layers.1: 0.5\n", []string{":3:", `"layers.1"`, "malformed"}},
		{"bad layer index", "mode: svd_8\nsparsity:\n  layers.x.mlp: 0.5\n", []string{":3:", `"layers.x.mlp"`, "index"}},
		{"leading zero index", "mode: svd_8\nsparsity:\n  layers.03.mlp: 0.5\n", []string{":3:", `"layers.03.mlp"`, "leading zeros"}},
		{"negative index", "mode: svd_8\nsparsity:\n  layers.-1.mlp: 0.5\n", []string{":3:", `"layers.-1.mlp"`}},
		{"unknown kind", "mode: svd_8\nsparsity:\n  layers.1.attn: 0.5\n", []string{":3:", `"layers.1.attn"`, "unknown kind"}},
		{"sparsity one", "mode: svd_8\nsparsity:\n  layers.1.mlp: 1\n", []string{":3:", `"layers.1.mlp"`, "[0, 1)"}},
		{"sparsity negative", "mode: svd_8\nsparsity:\n  layers.1.mlp: -0.1\n", []string{":3:", "[0, 1)"}},
		{"sparsity string", "mode: svd_8\nsparsity:\n  layers.1.mlp: \"0.5\"\n", []string{":3:", "number"}},
		{"sparsity null", "mode: svd_8\nsparsity:\n  layers.1.mlp:\n", []string{":3:", "number"}},
		{"non-string key", "mode: svd_8\nsparsity:\n  1: 0.5\n", []string{":3:", "strings"}},
		{"dense with sparsity", "mode: dense\nsparsity:\n  layers.2.mlp: 0.5\n", []string{":2:", "dense", "layer 2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseSparsityConfig([]byte(c.text), "bad.yaml")
			if err == nil {
				t.Fatalf("accepted %q as %+v", c.text, cfg)
			}
			for _, want := range append([]string{"bad.yaml"}, c.want...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestSparsityConfigValidate(t *testing.T) {
	cfg, err := ParseSparsityConfig([]byte("mode: svd_8\nsparsity:\n  layers.0.mlp: 0.5\n  layers.2.self_attn: 0.5\n"), "v.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(llamaShapedConfig(3)); err != nil {
		t.Errorf("3 layers: %v", err)
	}
	err = cfg.Validate(llamaShapedConfig(2))
	for _, want := range []string{"v.yaml:4:", "layer 2", "2 layers", "test config"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("2 layers: error %v lacks %q", err, want)
		}
	}
	if err := cfg.Validate(nil); err == nil {
		t.Error("nil model config accepted")
	}

	tiny := tinyConfig()
	big, err := ParseSparsityConfig([]byte("mode: svd_64\nsparsity:\n  layers.0.mlp: 0.5\n"), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Validate(tiny); err == nil || !strings.Contains(err.Error(), "rank 64") {
		t.Errorf("rank 64 on a %d-wide model: got %v", tiny.HiddenSize, err)
	}
}

func TestSparsityConfigStartStepFor(t *testing.T) {
	cases := []struct {
		start      float64
		total      int
		firstStep  int
		annotation string
	}{
		{0, 1000, 0, "sparse from the first step"},
		{0.05, 1000, 50, "fraction"},
		{0.05, 1010, 51, "50.5 rounds up, as the reference's float comparison does"},
		{0.07, 100, 8, "0.07*100 is 7.000000000000001 in float64, as in Python"},
		{0.1, 0, 0, "no steps"},
		{1, 500, 500, "1 is a fraction: never sparse"},
		{1.5, 500, 2, "absolute, rounded up"},
		{200, 500, 200, "absolute"},
		{200, 100, 200, "absolute beyond the run: never sparse"},
		{1e300, 100, 1<<31 - 1, "saturates"},
	}
	for _, c := range cases {
		cfg := &SparsityConfig{StartStep: c.start}
		if got := cfg.StartStepFor(c.total); got != c.firstStep {
			t.Errorf("start_step %g of %d steps (%s): first sparse step %d, want %d", c.start, c.total, c.annotation, got, c.firstStep)
		}
	}

	cfg := &SparsityConfig{StartStep: 0.05, Layers: map[int]LayerSparsity{1: {MLP: 0.5}}}
	if cfg.SparseAtStep(49, 1000) || !cfg.SparseAtStep(50, 1000) {
		t.Error("SparseAtStep disagrees with StartStepFor at the boundary")
	}
}

func TestKeptChannelsSparsity(t *testing.T) {
	cases := []struct {
		n    int
		s    float64
		want int
	}{
		{160, 0.9, 16}, // int(160*0.1) is 15 in float arithmetic; SPEC 4.4's epsilon keeps 16
		{14336, 0.99, 143},
		{1024, 0.75, 256},
		{8, 0, 8},
		{8, 0.999, 1}, // at least one channel
	}
	for _, c := range cases {
		if got := (LayerSparsity{MLP: c.s}).KeptMLPChannels(c.n); got != c.want {
			t.Errorf("MLP n=%d s=%g: kept %d, want %d", c.n, c.s, got, c.want)
		}
		if got := (LayerSparsity{Attention: c.s}).KeptAttentionChannels(c.n); got != c.want {
			t.Errorf("attention n=%d s=%g: kept %d, want %d", c.n, c.s, got, c.want)
		}
	}
}

func TestLoadSparsityConfigFromFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mine.yaml")
	if err := os.WriteFile(path, []byte("mode: svd_4\nstart_step: 10\nsparsity:\n  layers.0.self_attn: 0.5\n  layers.0.bogus: 0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadSparsityConfig(path)
	if err == nil || !strings.Contains(err.Error(), path+":5:") || !strings.Contains(err.Error(), "layers.0.bogus") {
		t.Errorf("got %v, want an error at %s:5 naming layers.0.bogus", err, path)
	}
	if err := os.WriteFile(path, []byte("mode: svd_4\nstart_step: 10\nsparsity:\n  layers.0.self_attn: 0.5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := OpenSparsityConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source != path || cfg.StartStepFor(1000) != 10 || cfg.Layer(0).Attention != 0.5 {
		t.Errorf("got %+v", cfg)
	}
	if _, err := LoadSparsityConfig(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	if cfg, err := OpenSparsityConfig("llama2-7b-csr"); err != nil || cfg.Source != "configs/sparsity/llama2-7b-csr.yaml" {
		t.Errorf("OpenSparsityConfig by name: %+v, %v", cfg, err)
	}
}

func TestSelectorAtWarmsUpDense(t *testing.T) {
	cfg, err := ParseSparsityConfig([]byte("start_step: 0.1\nmode: svd_8\nskip_output_tokens: true\nsparsity:\n  layers.1.mlp: 0.5\n"), "warmup.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var sel model.ChannelSelector = &Selector{}
	for step, wantSparse := range map[int]bool{0: false, 9: false, 10: true, 99: true} {
		if got := cfg.SelectorAt(sel, step, 100); (got != nil) != wantSparse {
			t.Errorf("step %d of 100: selector %v, want sparse=%v", step, got, wantSparse)
		}
	}
	dense, err := BuiltinSparsityConfig("dense")
	if err != nil {
		t.Fatal(err)
	}
	if dense.SelectorAt(sel, 50, 100) != nil {
		t.Error("the dense config returned a selector")
	}
}
