package lora

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// fixtureAdapterConfig returns the PEFT-written adapter_config.json of the
// llama-gqa fixture, decoded so tests can edit it.
func fixtureAdapterConfig(t *testing.T) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixtures.HF(t, "llama-gqa"), "adapter_init", ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func parseEdited(t *testing.T, edit func(map[string]any)) (*AdapterConfig, error) {
	t.Helper()
	cfg := fixtureAdapterConfig(t)
	edit(cfg)
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ParseAdapterConfig(raw, "adapter_config.json")
}

func TestParseAdapterConfigPEFTFile(t *testing.T) {
	c, err := parseEdited(t, func(map[string]any) {})
	if err != nil {
		t.Fatal(err)
	}
	// The fixture's PEFT LoraConfig: r=8, alpha 16, all seven projections
	// (listed in PEFT's own set order), every layer.
	if c.Rank != 8 || c.Alpha != 16 || c.RSLoRA || c.Layers != nil || !slices.Equal(c.Targets, model.Projections) {
		t.Errorf("parsed %+v", c)
	}
}

func TestParseAdapterConfigTargetModules(t *testing.T) {
	for _, c := range []struct {
		value any
		want  []model.Projection // nil: an error mentioning wantErr
		err   string
	}{
		{"all-linear", model.Projections, ""},
		{[]any{"v_proj", "self_attn.q_proj"}, []model.Projection{model.ProjQ, model.ProjV}, ""},
		{[]any{"down_proj", "mlp.down_proj"}, []model.Projection{model.ProjDown}, ""},
		{`.*\.(q|v)_proj`, nil, "regular expression"},
		{[]any{"lm_head"}, nil, `"lm_head" is not a decoder-layer projection`},
		{[]any{"model.layers.0.self_attn.q_proj"}, nil, "layers_to_transform"},
		{nil, nil, "missing"},
		{[]any{}, nil, "missing"},
		{42, nil, "want a list"},
	} {
		got, err := parseEdited(t, func(m map[string]any) { m["target_modules"] = c.value })
		if c.want != nil {
			if err != nil || !slices.Equal(got.Targets, c.want) {
				t.Errorf("target_modules %v: got %v, %v; want %v", c.value, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), `"target_modules"`) {
			t.Errorf("target_modules %v: error %v, want one naming the field and mentioning %q", c.value, err, c.err)
		}
	}
}

func TestParseAdapterConfigLayersToTransform(t *testing.T) {
	for _, c := range []struct {
		value any
		want  []int
		err   string
	}{
		{nil, nil, ""},
		{1, []int{1}, ""},
		{[]any{2, 0}, []int{0, 2}, ""},
		{[]any{}, nil, "empty"},
		{[]any{0, 0}, nil, "twice"},
		{[]any{-1}, nil, "not a layer index"},
		{[]any{5000}, nil, "not a layer index"},
		{"0", nil, "want a layer index"},
		{1.5, nil, "want a layer index"},
	} {
		got, err := parseEdited(t, func(m map[string]any) { m["layers_to_transform"] = c.value })
		if c.err == "" {
			if err != nil || !slices.Equal(got.Layers, c.want) {
				t.Errorf("layers_to_transform %v: got %v, %v; want %v", c.value, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), `"layers_to_transform"`) {
			t.Errorf("layers_to_transform %v: error %v, want one naming the field and mentioning %q", c.value, err, c.err)
		}
	}
}

func TestParseAdapterConfigRejectsUnsupportedOptions(t *testing.T) {
	for _, c := range []struct {
		field string
		value any
	}{
		{"lora_bias", true},
		{"exclude_modules", []any{"q_proj"}},
		{"layer_replication", []any{[]any{0, 1}}},
		{"use_qalora", true},
		{"target_parameters", []any{"mlp.experts.down_proj"}},
		{"trainable_token_indices", []any{1, 2}},
		{"layers_pattern", "h"},
		{"task_type", "SEQ_CLS"},
		{"r", 0},
		{"r", 1 << 20},
		{"use_dora", true},
		{"modules_to_save", []any{"lm_head"}},
	} {
		_, err := parseEdited(t, func(m map[string]any) { m[c.field] = c.value })
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", c.field)) {
			t.Errorf("%s = %v: error %v, want one naming the field", c.field, c.value, err)
		}
	}
	// PEFT's default layers_pattern and explicit empty values are fine.
	for _, c := range []struct {
		field string
		value any
	}{{"layers_pattern", "layers"}, {"exclude_modules", nil}, {"lora_bias", false}, {"loftq_config", map[string]any{}}} {
		if _, err := parseEdited(t, func(m map[string]any) { m[c.field] = c.value }); err != nil {
			t.Errorf("%s = %v: %v", c.field, c.value, err)
		}
	}
	if _, err := ParseAdapterConfig([]byte(`[1, 2]`), "a.json"); err == nil || !strings.Contains(err.Error(), "a.json") {
		t.Errorf("non-object config: %v", err)
	}
}

// peftNames lists PEFT's weight names for the given layers and projections.
func peftNames(layers []int, projs []model.Projection) []string {
	var names []string
	for _, l := range layers {
		for _, p := range projs {
			name := Key{l, p}.PEFTName()
			names = append(names, name+".lora_A.weight", name+".lora_B.weight")
		}
	}
	return names
}

func without(names []string, drop string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == drop })
}

func TestMatchWeights(t *testing.T) {
	qv := []model.Projection{model.ProjQ, model.ProjV}
	all := &AdapterConfig{Config: Config{Rank: 4, Alpha: 8, Targets: qv}}
	onlyLayer1 := &AdapterConfig{Config: all.Config, Layers: []int{1}}
	full := peftNames([]int{0, 1}, qv)
	qA := Key{1, model.ProjQ}.PEFTName() + ".lora_A.weight"
	qB := Key{1, model.ProjQ}.PEFTName() + ".lora_B.weight"

	if got, err := all.matchWeights(full, 2, "w"); err != nil || len(got) != 4 || got[Key{1, model.ProjQ}] != (adapterTensors{qA, qB}) {
		t.Errorf("full set: %v, %v", got, err)
	}
	if got, err := onlyLayer1.matchWeights(peftNames([]int{1}, qv), 2, "w"); err != nil || len(got) != 2 {
		t.Errorf("layers_to_transform [1]: %v, %v", got, err)
	}
	// PEFT's in-memory names carry the adapter name; they pair up too.
	named := []string{strings.Replace(qA, "lora_A.", "lora_A.default.", 1), qB}
	qOnly := &AdapterConfig{Config: Config{Rank: 4, Alpha: 8, Targets: []model.Projection{model.ProjQ}}, Layers: []int{1}}
	if got, err := qOnly.matchWeights(named, 2, "w"); err != nil || len(got) != 1 {
		t.Errorf(".default. names: %v, %v", got, err)
	}

	for _, c := range []struct {
		name    string
		cfg     *AdapterConfig
		weights []string
		want    []string
	}{
		{"lora_A without lora_B", all, without(full, qB), []string{qA, "no matching lora_B"}},
		{"lora_B without lora_A", all, without(full, qA), []string{qB, "no matching lora_A"}},
		{"module not targeted", all, peftNames([]int{0, 1}, []model.Projection{model.ProjQ, model.ProjK, model.ProjV}), []string{"k_proj", "target_modules does not list"}},
		{"layer excluded", onlyLayer1, full, []string{"layers.0.", "layers_to_transform [1] excludes"}},
		{"targeted but absent", all, peftNames([]int{0}, qv), []string{"no weights for base_model.model.model.layers.1.self_attn.q_proj"}},
		{"layer beyond the model", all, peftNames([]int{0, 1, 2}, qv), []string{`layer "2" is not one of the model's 2 layers`}},
		{"layers_to_transform beyond the model", &AdapterConfig{Config: all.Config, Layers: []int{5}}, full, []string{"layers_to_transform lists layer 5"}},
		{"not a PEFT key", all, append(slices.Clone(full), "lm_head.weight"), []string{"lm_head.weight", "not a PEFT LoRA key"}},
		{"leading zero layer", all, append(slices.Clone(full), "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight"), []string{`layer "01"`}},
	} {
		_, err := c.cfg.matchWeights(c.weights, 2, "adapter_model.safetensors")
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		for _, w := range append(c.want, "adapter_model.safetensors") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
	}
}

// writeAdapter writes an adapter directory with the fixture's weights
// filtered by keep and its config edited by edit.
func writeAdapter(t *testing.T, keep func(name string) bool, edit func(map[string]any)) string {
	t.Helper()
	src := filepath.Join(fixtures.HF(t, "llama-gqa"), "adapter_init")
	f, err := safetensors.Open(filepath.Join(src, WeightsFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tensors := map[string]safetensors.Tensor{}
	for _, name := range f.Names() {
		if !keep(name) {
			continue
		}
		info, _ := f.Info(name)
		values, err := f.ReadFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		if tensors[name], err = safetensors.NewFloatTensor(safetensors.F32, info.Shape, values); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if err := safetensors.WriteFile(filepath.Join(dir, WeightsFileName), tensors, nil); err != nil {
		t.Fatal(err)
	}
	cfg := fixtureAdapterConfig(t)
	edit(cfg)
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, ConfigFileName), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadHonoursTargetModulesAndLayers(t *testing.T) {
	m := loadFixtureModel(t)
	defer m.Release()
	last := len(m.Layers) - 1
	lastLayer := fmt.Sprintf(".layers.%d.", last)
	qv := func(name string) bool {
		return strings.Contains(name, ".q_proj.") || strings.Contains(name, ".v_proj.")
	}

	dir := writeAdapter(t, func(n string) bool { return qv(n) && strings.Contains(n, lastLayer) }, func(c map[string]any) {
		c["target_modules"] = []any{"q_proj", "v_proj"}
		c["layers_to_transform"] = last
	})
	s, err := Load(m, dir)
	if err != nil {
		t.Fatal(err)
	}
	keys := s.Keys()
	// Saved and loaded again, the adapter keeps its layers.
	saved := t.TempDir()
	if err := s.Save(saved); err != nil {
		t.Fatal(err)
	}
	s.Release()
	if want := []Key{{last, model.ProjQ}, {last, model.ProjV}}; !slices.Equal(keys, want) {
		t.Errorf("adapted %v, want %v", keys, want)
	}
	again, err := Load(m, saved)
	if err != nil {
		t.Fatalf("reloading a saved adapter of some layers: %v", err)
	}
	if got := again.Keys(); !slices.Equal(got, keys) {
		t.Errorf("reloaded %v, want %v", got, keys)
	}
	again.Release()

	for _, c := range []struct {
		name string
		keep func(string) bool
		edit func(map[string]any)
		want string
	}{
		{"weights beyond target_modules", func(string) bool { return true },
			func(c map[string]any) { c["target_modules"] = []any{"q_proj", "v_proj"} }, "target_modules does not list"},
		{"weights beyond layers_to_transform", qv,
			func(c map[string]any) {
				c["target_modules"] = []any{"q_proj", "v_proj"}
				c["layers_to_transform"] = last
			}, "layers_to_transform"},
		{"lora_A without lora_B", func(n string) bool { return !strings.HasSuffix(n, "layers.0.mlp.up_proj.lora_B.weight") },
			func(map[string]any) {}, "layers.0.mlp.up_proj.lora_A.weight has no matching lora_B"},
		{"layers_to_transform beyond the model", func(string) bool { return true },
			func(c map[string]any) { c["layers_to_transform"] = []any{0, 99} }, "layers_to_transform lists layer 99"},
	} {
		_, err := Load(m, writeAdapter(t, c.keep, c.edit))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
}
