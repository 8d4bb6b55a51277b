package predictor

import (
	"io/fs"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/configs/sparsity"
	"github.com/sparselora/sparselora/model"
)

// FuzzParseSparsityConfig feeds arbitrary YAML to ParseSparsityConfig: no
// panic (alias bombs included: yaml.v3 bounds alias expansion), errors name
// the file, and an accepted config holds only sparsities in [0, 1). The seed
// corpus is the shipped tables plus testdata/fuzz/FuzzParseSparsityConfig.
func FuzzParseSparsityConfig(f *testing.F) {
	names, _ := fs.Glob(sparsity.Files, "*.yaml")
	for _, name := range names {
		data, err := fs.ReadFile(sparsity.Files, name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseSparsityConfig(data, "fuzz.yaml")
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if c.Rank < 0 || (c.Dense && c.HasSparseLayers()) || (!c.Dense && c.Rank == 0) {
			t.Fatalf("accepted mode %q rank %d dense %v", c.Mode, c.Rank, c.Dense)
		}
		for layer, s := range c.Layers {
			if layer < 0 || layer >= model.MaxLayers || !(s.MLP >= 0 && s.MLP < 1) || !(s.Attention >= 0 && s.Attention < 1) {
				t.Fatalf("layer %d: %+v", layer, s)
			}
			_ = s.KeptMLPChannels(4096)
			_ = s.KeptAttentionChannels(1024)
		}
		_ = c.StartStepFor(1000)
	})
}

func TestParseSparsityConfigLayerIndexLimit(t *testing.T) {
	_, err := ParseSparsityConfig([]byte("mode: svd_8\nsparsity:\n  layers.0.mlp: 0.5\n  layers.5000.mlp: 0.5\n"), "big.yaml")
	if err == nil || !strings.Contains(err.Error(), "big.yaml:4") || !strings.Contains(err.Error(), "layers.5000.mlp") || !strings.Contains(err.Error(), "5000") {
		t.Errorf("layer 5000: %v, want an error naming the line, the key and the index", err)
	}
	if _, err := ParseSparsityConfig([]byte("mode: svd_8\nsparsity:\n  layers.1023.mlp: 0.5\n"), "ok.yaml"); err != nil {
		t.Errorf("layer 1023: %v", err)
	}
}
