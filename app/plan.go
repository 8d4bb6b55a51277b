package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/train"
)

const planSynopsis = `plan [DIR | --shape llama2-7b|llama3-8b|CONFIG.json [--layers N]] [train's flags] [--seq T] [--quantize 4|8 --group-size G] [--json]

Predicts the peak GPU memory of a training run by part (frozen weights, LoRA
parameters + gradients + AdamW moments, saved activations, recompute scratch,
LM-head chunk, attention scratch, SVD factors, staging), without a GPU. With
--memory-limit it exits non-zero when the plan does not fit, naming settings
that need less.`

func runPlan(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("plan", planSynopsis, stdout, stderr)
	cfg := train.DefaultConfig()
	cfg.BatchSize = 1
	trainFlags(fs, &cfg)
	shape := fs.String("shape", "", "model shape instead of a directory: llama2-7b, llama3-8b or a config.json")
	layers := fs.Int("layers", 0, "with --shape: decoder layers (0: the shape's own)")
	seq := fs.Int("seq", 2048, "tokens per sequence (train pads to its data's longest example)")
	jsonOut := fs.Bool("json", false, "print the plan as JSON (peak_bytes and the parts)")
	if err := parseFlags(fs, args); err != nil { // DIR is optional: see planConfig
		return err
	}
	mcfg, what, err := planConfig(fs, cfg.Model, *shape, *layers)
	if err != nil {
		return err
	}
	switch {
	case *seq < 2:
		return fmt.Errorf("--seq %d: want at least 2", *seq)
	case mcfg.MaxPositionEmbeddings > 0 && *seq > mcfg.MaxPositionEmbeddings:
		return fmt.Errorf("--seq %d: longer than the model's max_position_embeddings %d", *seq, mcfg.MaxPositionEmbeddings)
	}
	if err := cfg.ValidateMemory(); err != nil {
		return err
	}
	limit, _ := train.ParseSize(cfg.MemoryLimit) // ValidateMemory checked it
	settings, err := cfg.MemorySettings(mcfg, *seq, gpu.Limits{})
	if err != nil {
		return err
	}
	plan := train.PlanMemory(mcfg, settings)
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(plan); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "model: %s (%d layers, hidden %d, intermediate %d, vocab %d)\n", what, mcfg.NumHiddenLayers,
			mcfg.HiddenSize, mcfg.IntermediateSize, mcfg.VocabSize)
		fmt.Fprintf(stdout, "run: batch %d x %d tokens, grad-accum %d, %s\n", cfg.BatchSize, *seq, cfg.GradAccum, planRunString(cfg, settings))
		printMemoryPlan(stdout, plan)
		for _, alt := range train.Alternatives(mcfg, settings) {
			fmt.Fprintf(stdout, "  with %-55s %10s\n", alt.Flags+":", memString(train.PlanMemory(mcfg, alt.Settings).PeakBytes))
		}
	}
	return train.CheckMemory(mcfg, settings, limit)
}

// planConfig reads the model config of plan: DIR (or --model), or --shape
// with --layers.
func planConfig(fs *flag.FlagSet, modelDir, shape string, layers int) (*model.Config, string, error) {
	if fs.NArg() > 1 {
		return nil, "", fmt.Errorf("one model directory, got %d arguments", fs.NArg())
	}
	if fs.NArg() == 1 {
		modelDir = fs.Arg(0)
	}
	switch {
	case modelDir != "" && shape != "":
		return nil, "", errors.New("give a model directory or --shape, not both")
	case modelDir != "":
		if layers != 0 {
			return nil, "", errors.New("--layers: only with --shape")
		}
		cfg, err := model.LoadConfig(filepath.Join(modelDir, model.ConfigFileName))
		return cfg, modelDir, err
	case shape == "":
		return nil, "", errors.New("a model directory or --shape llama2-7b|llama3-8b|CONFIG.json is required")
	}
	cfg, err := model.BuiltinShape(shape)
	if err != nil && (strings.HasSuffix(shape, ".json") || strings.ContainsRune(shape, os.PathSeparator)) {
		cfg, err = model.LoadConfig(shape)
	}
	if err != nil {
		return nil, "", err
	}
	if layers < 0 {
		return nil, "", fmt.Errorf("--layers %d: want 1 or more (0: the shape's own)", layers)
	}
	if layers > 0 {
		cfg.NumHiddenLayers = layers
	}
	return cfg, shape + " shapes", nil
}

func planRunString(cfg train.Config, s train.MemorySettings) string {
	var parts []string
	if cfg.Full {
		parts = append(parts, "full-parameter")
	} else {
		parts = append(parts, fmt.Sprintf("LoRA r=%d on %s", cfg.Rank, cfg.Targets))
	}
	switch {
	case s.Quantize.Bits > 0:
		parts = append(parts, fmt.Sprintf("%d-bit weights (groups of %d)", s.Quantize.Bits, s.Quantize.GroupSize))
	default:
		parts = append(parts, s.WeightDType.String()+" weights")
	}
	switch {
	case s.GradCheckpoint && s.CheckpointEvery > 1:
		parts = append(parts, fmt.Sprintf("grad-checkpoint keeping every %d layers' input", s.CheckpointEvery))
	case s.GradCheckpoint:
		parts = append(parts, "grad-checkpoint")
	}
	if s.SparseAttnLayers+s.SparseMLPs > 0 {
		parts = append(parts, fmt.Sprintf("SparseLoRA on %d attention and %d MLP layers", s.SparseAttnLayers, s.SparseMLPs))
	}
	return strings.Join(parts, ", ")
}

// printMemoryPlan prints the plan's parts and peak.
func printMemoryPlan(w io.Writer, p train.MemoryPlan) {
	fmt.Fprintln(w, "GPU memory plan:")
	for _, part := range p.Parts {
		fmt.Fprintf(w, "  %-60s %10s\n", part.Name, memString(part.Bytes))
	}
	fmt.Fprintf(w, "  %-60s %10s\n", "peak", memString(p.PeakBytes))
	if p.HostBytes > 0 {
		fmt.Fprintf(w, "  %-60s %10s\n", "host memory instead of GPU (the embedding table)", memString(p.HostBytes))
	}
}

// memString writes a byte count in GiB, MiB or KiB with one decimal.
func memString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
}
