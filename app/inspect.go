package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", "inspect DIR [--batch B --seq T --bf16 --rank R --targets q,k,v,o,gate,up,down] (flags before or after DIR)", stdout, stderr)
	batch := fs.Int("batch", 4, "sequences per batch for the memory estimate")
	seq := fs.Int("seq", 512, "tokens per sequence for the memory estimate (at most the model's max_position_embeddings)")
	bf16 := fs.Bool("bf16", false, "estimate with frozen weights stored as bf16")
	rank := fs.Int("rank", 16, "LoRA rank for the memory estimate")
	targets := fs.String("targets", "q,k,v,o,gate,up,down", "LoRA target modules: q,k,v,o,gate,up,down (or q_proj,...), or all")
	singular := fs.Int("singular-values", 6, "show this many top singular values of q_proj and gate_proj in the first and last layers (0: none; matrices up to 16M elements)")
	if err := parseCommand(fs, args, "DIR"); err != nil {
		return err
	}
	// Bounded like train's flags, so that the arithmetic of the estimate cannot
	// overflow into a small, wrong figure.
	for _, f := range []struct {
		name      string
		value, hi int
	}{{"batch", *batch, maxInspectBatch}, {"seq", *seq, maxInspectSeq}, {"rank", *rank, maxInspectRank}} {
		if err := checkPositive(f.name, f.value); err != nil {
			return err
		}
		if err := checkRange(f.name, f.value, 1, f.hi, "a value"); err != nil {
			return err
		}
	}
	seqGiven := false
	fs.Visit(func(f *flag.Flag) { seqGiven = seqGiven || f.Name == "seq" })
	targetList, err := lora.ParseTargets(*targets)
	if err != nil {
		return err
	}
	dir := fs.Arg(0)
	cfg, err := model.LoadConfig(filepath.Join(dir, model.ConfigFileName))
	if err != nil {
		return err
	}
	if maxPos := cfg.MaxPositionEmbeddings; maxPos > 0 && *seq > maxPos {
		if seqGiven {
			return fmt.Errorf("--seq %d: longer than the model's max_position_embeddings %d", *seq, maxPos)
		}
		*seq = maxPos // the default, 512, does not fit this model
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return err
	}
	defer ckpt.Close()
	warnings, err := model.VerifyCheckpoint(cfg, ckpt)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(stderr, "sparselora inspect: warning: %s\n", w)
	}
	dtypes := map[safetensors.Dtype]int{}
	for _, name := range ckpt.Names() {
		if info, err := ckpt.Info(name); err == nil {
			dtypes[info.Dtype]++
		}
	}
	var stored []string
	for d, n := range dtypes {
		stored = append(stored, fmt.Sprintf("%s (%d tensors)", d, n))
	}
	slices.Sort(stored)
	var loraParams int64
	for _, p := range targetList {
		in, out := cfg.ProjectionShape(p)
		loraParams += int64(*rank) * int64(in+out)
	}
	loraParams *= int64(cfg.NumHiddenLayers)
	dtype := gpu.F32
	if *bf16 {
		dtype = gpu.BF16
	}
	mem := train.PlanMemory(cfg, train.MemorySettings{Rows: *batch, Seq: *seq, GradAccum: 1, WeightDType: dtype, Rank: *rank, Targets: targetList})
	fmt.Fprintf(stdout, "model:        %s\n", dir)
	fmt.Fprintf(stdout, "architecture: %s (%d layers, hidden %d, intermediate %d, %d heads / %d kv heads x %d, vocab %d)\n",
		cfg.Architecture, cfg.NumHiddenLayers, cfg.HiddenSize, cfg.IntermediateSize, cfg.NumAttentionHeads,
		cfg.NumKeyValueHeads, cfg.HeadDim, cfg.VocabSize)
	fmt.Fprintf(stdout, "rope:         %s, theta %g\n", cfg.Rope.Type, cfg.Rope.Theta)
	fmt.Fprintf(stdout, "parameters:   %d (%s)\n", cfg.ParameterCount(), countString(cfg.ParameterCount()))
	fmt.Fprintf(stdout, "stored as:    %s\n", strings.Join(stored, ", "))
	nonFinite, scanned, err := safetensors.ScanNonFinite(ctx, ckpt)
	if err != nil {
		return err
	}
	if len(nonFinite) == 0 {
		fmt.Fprintf(stdout, "values:       all finite (%d tensors read)\n", scanned)
	} else {
		fmt.Fprintf(stdout, "values:       %d of %d tensors hold NaN or Inf:\n", len(nonFinite), scanned)
		for _, n := range nonFinite {
			fmt.Fprintf(stdout, "  %s\n", n)
		}
	}
	fmt.Fprintf(stdout, "training memory, batch %d x %d tokens, weights %s, LoRA r=%d on %s (%d trainable parameters; sparselora plan has more settings):\n",
		*batch, *seq, dtype, *rank, *targets, loraParams)
	printMemoryPlan(stdout, mem)
	if *singular > 0 {
		printSpectra(stdout, cfg, ckpt, *singular)
	}
	if len(nonFinite) > 0 {
		return fmt.Errorf("%s: %d tensors hold NaN or Inf values (first: %s): training or generating from it gives NaN", ckpt.Path(), len(nonFinite), nonFinite[0].Name)
	}
	return nil
}

// printSpectra shows the top singular values of a few projections: the
// low-rank structure SparseLoRA's SVD estimator relies on (random weights
// have a flat spectrum, trained ones fall off).
func printSpectra(w io.Writer, cfg *model.Config, ckpt safetensors.Reader, k int) {
	fmt.Fprintf(w, "top %d singular values (SVD estimator structure):\n", k)
	for _, layer := range slices.Compact([]int{0, cfg.NumHiddenLayers - 1}) {
		for _, p := range []model.Projection{model.ProjQ, model.ProjGate} {
			name := fmt.Sprintf("model.layers.%d.%s.%s.weight", layer, p.Module(), p)
			in, out := cfg.ProjectionShape(p)
			values, err := ckpt.ReadFloat32(name)
			var sv []float64
			if err == nil {
				sv, err = predictor.TopSingularValues(values, out, in, k)
			}
			if err != nil {
				fmt.Fprintf(w, "  %-40s %v\n", name, err)
				continue
			}
			text := make([]string, len(sv))
			for i, v := range sv {
				text[i] = fmt.Sprintf("%.3g", v)
			}
			fmt.Fprintf(w, "  %-40s %s\n", name, strings.Join(text, " "))
		}
	}
}

// Bounds of inspect's estimate flags: far above any real run (train takes
// ranks up to 4096 and batches up to 4096), low enough that bytes fit in 64 bits.
const (
	maxInspectBatch = 1 << 16
	maxInspectSeq   = 1 << 20
	maxInspectRank  = 4096
)

// countString abbreviates a count: 6.74B, 204.2K.
func countString(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1fK", float64(n)/1e3)
}
