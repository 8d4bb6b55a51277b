package train

import (
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/predictor"
)

// paperShapes are the models the SparseLoRA paper tuned tables for, by the
// shape fields that identify them, with the table `auto` picks (the Math10K
// tables: the paper's headline task).
var paperShapes = []struct {
	hidden, intermediate, layers, vocab int
	table                               string
}{
	{4096, 11008, 32, 32000, "llama2-7b-math10k"},
	{5120, 13824, 40, 32000, "llama2-13b-math10k"},
	{4096, 14336, 32, 128256, "llama3-8b-math10k"},
}

// autoTable is the table `auto` maps by relative depth onto a model of
// another shape.
const autoTable = "llama3-8b-math10k"

// ResolveSparsity turns --sparsity into a table for cfg's layers (nil for
// dense) and a sentence for the log saying what was chosen.
func ResolveSparsity(name string, cfg *model.Config) (*predictor.SparsityConfig, string, error) {
	switch name {
	case "dense", "none":
		return nil, "dense LoRA (no SparseLoRA)", nil
	case "auto":
		for _, s := range paperShapes {
			if cfg.HiddenSize == s.hidden && cfg.IntermediateSize == s.intermediate && cfg.NumHiddenLayers == s.layers && cfg.VocabSize == s.vocab {
				table, err := predictor.BuiltinSparsityConfig(s.table)
				if err != nil {
					return nil, "", err
				}
				return table, fmt.Sprintf("auto: the paper's table %s (the model's shape matches)", s.table), nil
			}
		}
		table, err := predictor.BuiltinSparsityConfig(autoTable)
		if err != nil {
			return nil, "", err
		}
		mapped := mapByDepth(table, cfg.NumHiddenLayers)
		return mapped, fmt.Sprintf("auto: no paper table for this shape; %s mapped onto %d layers by relative depth", autoTable, cfg.NumHiddenLayers), nil
	}
	table, err := predictor.OpenSparsityConfig(name)
	if err != nil {
		if _, statErr := os.Stat(name); statErr != nil && !strings.ContainsAny(name, "/.") {
			var tables []string
			for _, t := range predictor.BuiltinSparsityConfigNames() {
				if t != "dense" {
					tables = append(tables, t)
				}
			}
			return nil, "", fmt.Errorf("--sparsity %q: want auto, dense, a YAML file or a table: %s", name, strings.Join(tables, ", "))
		}
		return nil, "", fmt.Errorf("--sparsity: %w", err)
	}
	if err := table.Validate(cfg); err != nil {
		return nil, "", fmt.Errorf("--sparsity %s: %w", name, err)
	}
	if !table.HasSparseLayers() {
		return nil, fmt.Sprintf("%s: no sparse layer (dense LoRA)", name), nil
	}
	return table, fmt.Sprintf("table %s", table.Source), nil
}

// mapByDepth renumbers a table of L layers for a model of n layers: layer i
// takes the sparsity of table layer floor((i + 0.5) L / n), the one at the same
// relative depth.
func mapByDepth(table *predictor.SparsityConfig, n int) *predictor.SparsityConfig {
	tableLayers := 0
	for layer := range table.Layers {
		tableLayers = max(tableLayers, layer+1)
	}
	// The paper's tables cover every layer of a 32- or 40-layer model, the last
	// few dense; the depth scale is that model's.
	tableLayers = max(tableLayers, 32)
	out := *table
	out.Layers = map[int]predictor.LayerSparsity{}
	for i := range n {
		j := int(math.Floor((float64(i) + 0.5) * float64(tableLayers) / float64(n)))
		if s, ok := table.Layers[j]; ok && (s.MLP > 0 || s.Attention > 0) {
			out.Layers[i] = s
		}
	}
	return &out
}

// keptFractions are the per-layer fractions of FFN and attention (kv)
// channels a sparse step keeps for context tokens (1 for dense layers).
func keptFractions(table *predictor.SparsityConfig, cfg *model.Config, sparse bool) (mlp, attn []float64) {
	mlp, attn = make([]float64, cfg.NumHiddenLayers), make([]float64, cfg.NumHiddenLayers)
	kv := cfg.NumKeyValueHeads * cfg.HeadDim
	for i := range mlp {
		mlp[i], attn[i] = 1, 1
		if !sparse || table == nil {
			continue
		}
		s := table.Layer(i)
		if s.MLP > 0 {
			mlp[i] = float64(s.KeptMLPChannels(cfg.IntermediateSize)) / float64(cfg.IntermediateSize)
		}
		if s.Attention > 0 {
			attn[i] = float64(s.KeptAttentionChannels(kv)) / float64(kv)
		}
	}
	return mlp, attn
}
