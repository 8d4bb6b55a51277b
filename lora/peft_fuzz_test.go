package lora

import (
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model"
)

// FuzzParseAdapterConfig feeds arbitrary adapter_config.json contents to
// ParseAdapterConfig (no device needed): no panic, and what it accepts is a
// rank in range, a non-empty set of known projections and sorted, distinct,
// in-range layers. The seed corpus is in testdata/fuzz/FuzzParseAdapterConfig.
func FuzzParseAdapterConfig(f *testing.F) {
	f.Add([]byte(`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}`))
	f.Add([]byte(`{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear", "layers_to_transform": [3, 1]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseAdapterConfig(data, "fuzz/adapter_config.json")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz/adapter_config.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if c.Rank <= 0 || c.Rank > maxAdapterRank || c.Alpha == 0 || len(c.Targets) == 0 {
			t.Fatalf("accepted %+v", c)
		}
		for i, p := range c.Targets {
			if !slices.Contains(model.Projections, p) || (i > 0 && p <= c.Targets[i-1]) {
				t.Fatalf("targets %v", c.Targets)
			}
		}
		for i, l := range c.Layers {
			if l < 0 || l >= model.MaxLayers || (i > 0 && l <= c.Layers[i-1]) {
				t.Fatalf("layers %v", c.Layers)
			}
		}
	})
}

// FuzzParsePEFTKey checks the weight-name parser: no panic, and an accepted
// name round-trips through Key.PEFTName.
func FuzzParsePEFTKey(f *testing.F) {
	f.Add("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")
	f.Add("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight")
	f.Add("base_model.model.model.layers.-1.mlp.up_proj.lora_A.weight")
	f.Fuzz(func(t *testing.T, name string) {
		k, part, err := parsePEFTKey(name, 4)
		if err != nil {
			return
		}
		if k.Layer < 0 || k.Layer >= 4 || (part != "lora_A" && part != "lora_B") {
			t.Fatalf("%q parsed as %+v %s", name, k, part)
		}
		want := k.PEFTName() + "." + part
		if name != want+".weight" && name != want+".default.weight" {
			t.Fatalf("%q parsed as %s", name, want)
		}
	})
}
