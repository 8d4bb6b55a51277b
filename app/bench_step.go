package app

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

func runBenchStep(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench step", "bench step --shape llama3-8b|llama2-7b|CONFIG.json [flags]", stdout, stderr)
	shape := fs.String("shape", "llama3-8b", "model shape: llama2-7b, llama3-8b or a config.json")
	layers := fs.Int("layers", 2, "decoder layers to build (random weights)")
	first := fs.Int("first-layer", -1, "sparsity-table layer that the first built layer takes its sparsity from (-1: 0 when the built layers cover the table, else the first layer whose FFN and attention are both sparse)")
	batch := fs.Int("batch", 1, "sequences per batch")
	seq := fs.Int("seq", 256, "tokens per sequence")
	output := fs.Int("output-tokens", 64, "scored (output) tokens at the end of each sequence's real tokens")
	padding := fs.Int("padding", 0, "padding positions (attention_mask 0) at the end of each sequence")
	flopsOnly := fs.Bool("flops-only", false, "print the analytic FLOP table of the shape and exit, without a GPU or a model")
	sparsityName := fs.String("sparsity", "llama3-8b-math10k", "sparsity table: a built-in name or a YAML file")
	rank := fs.Int("rank", 32, "LoRA rank")
	targetsFlag := fs.String("targets", "q,k,v,o", "LoRA target modules")
	bf16 := fs.Bool("bf16", true, "store frozen weights as bf16 (f32 otherwise)")
	gradCheckpoint := fs.Bool("grad-checkpoint", false, "keep only each layer's input and recompute its forward in backward")
	checkpointEvery := fs.Int("checkpoint-every", 1, "with --grad-checkpoint: keep every N-th layer's input only, replaying the layers between in backward")
	var quant quantizeFlags
	addQuantizeFlags(fs, &quant)
	reps := fs.Int("reps", 3, "timed steps per variant (after one warm-up step)")
	jsonOut := fs.String("json", "bench-step.json", "write results as JSON to this file (empty: don't)")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	if err := checkOutputPath("json", *jsonOut); err != nil {
		return err
	}
	if *layers <= 0 || *batch <= 0 || *seq <= 1 || *output <= 0 || *padding < 0 || *output+*padding >= *seq || *reps <= 0 || *rank <= 0 {
		return fmt.Errorf("want --layers, --batch, --reps, --rank > 0, --padding >= 0 and 0 < --output-tokens < --seq - --padding")
	}
	if *checkpointEvery < 1 || *checkpointEvery > 1 && !*gradCheckpoint {
		return fmt.Errorf("--checkpoint-every %d: want 1 or more, and more than 1 only with --grad-checkpoint", *checkpointEvery)
	}
	spec := stepBenchSpec{shape: *shape, layers: *layers, first: *first, batch: *batch, seq: *seq, output: *output, padding: *padding,
		sparsity: *sparsityName, rank: *rank, targets: *targetsFlag, bf16: *bf16, reps: *reps}
	quantize, err := quant.spec()
	if err != nil {
		return err
	}
	settings, start, table, err := spec.settings()
	if err != nil {
		return err
	}
	flops, dtype := settings.FLOPs, settings.DType
	if *flopsOnly {
		fmt.Fprintf(stdout, "model: %s shapes, %d layers (sparsity of table layers %d-%d of %s, skip_output_tokens %v); batch %d x %d (%d padding), %d output tokens; LoRA r=%d on %s\n",
			*shape, *layers, start, start+*layers-1, *sparsityName, table.SkipOutputTokens, *batch, *seq, *padding, *output, *rank, *targetsFlag)
		fmt.Fprintf(stdout, "analytic FLOPs per step: dense %.1f GFLOP, sparse %.1f GFLOP, sparse/dense %.3f\n", flops.Dense/1e9, flops.Sparse/1e9, flops.Ratio)
		return flops.Table(stdout)
	}

	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeUnlessInterrupted(ctx, closeDev)
	fmt.Fprintf(stdout, "adapter: %s (%s, %s, %s); %s\n", dev.Info.Name(), dev.Info.Backend, dev.Info.Type, dev.Info.Description, reductionPath(dev))
	weights := dtype.String()
	if quantize != nil {
		weights = fmt.Sprintf("%d-bit (groups of %d, scales %s; matrices the group does not divide %s)", quantize.Bits, quantize.GroupSize, dtype, dtype)
	}
	fmt.Fprintf(stdout, "model: %s shapes, %d layers (sparsity of table layers %d-%d of %s), weights %s; batch %d x %d (%d padding), %d output tokens; LoRA r=%d on %s\n",
		*shape, *layers, start, start+*layers-1, *sparsityName, weights, *batch, *seq, *padding, *output, *rank, *targetsFlag)
	settings.SVD = progress(stderr, "SVD estimator")
	settings.GradCheckpoint, settings.CheckpointEvery = *gradCheckpoint, *checkpointEvery
	settings.Quantize = quantize
	res, err := train.BenchStep(ctx, dev, settings)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "setup (random weights, SVD factors): %.1f s\n", res.Setup.Seconds())
	results, counted := res.Timings, res.Counted
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tms/step\ttokens/s\tGFLOP/step\tTFLOP/s\tspeed-up\t")
	for _, r := range results {
		speed := "1.00x"
		if r.Speedup > 0 {
			speed = fmt.Sprintf("%.2fx", r.Speedup)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.4f\t%s\t\n", r.Variant, r.MedianMS, r.TokensPerSec, r.FLOPs/1e9, r.TFLOPS, speed)
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(stdout, "GPU memory, %s: planned peak %s, measured %s (%+.1f %%)\n", r.Variant, memString(r.PlannedPeakBytes),
			memString(uint64(r.MeasuredPeakBytes)), 100*(float64(r.MeasuredPeakBytes)/float64(r.PlannedPeakBytes)-1))
	}
	fmt.Fprintf(stdout, "FLOPs sparse/dense: %.3f (wall-clock timing: submit to queue idle, median of %d)\n", flops.Ratio, *reps)
	if len(results) == 2 && flops.Ratio > 0 {
		fmt.Fprintf(stdout, "speed-up %.2fx = %.0f %% of the FLOP bound %.2fx (the gathered path's efficiency per useful FLOP relative to the dense path's)\n",
			results[1].Speedup, 100*results[1].Speedup*flops.Ratio, 1/flops.Ratio)
	}
	if err := flops.Table(stdout); err != nil {
		return err
	}
	if err := printCounted(stdout, flops, counted); err != nil {
		return err
	}
	if err := printProfile(stdout, counted); err != nil {
		return err
	}
	if *jsonOut != "" {
		out := map[string]any{"adapter": dev.Info, "date": time.Now().UTC().Format(time.RFC3339), "shape": *shape,
			"layers": *layers, "table_layers": []int{start, start + *layers - 1}, "sparsity": *sparsityName,
			"batch": *batch, "seq": *seq, "output_tokens": *output, "lora_rank": *rank, "lora_targets": *targetsFlag,
			"weights": dtype.String(), "subgroups": dev.HasSubgroups, "grad_checkpoint": *gradCheckpoint, "quantize_bits": quant.bits, "group_size": quant.group, "flops_ratio": flops.Ratio, "results": results, "padding": *padding,
			"flops": flops, "recorded_flops": map[string]any{"dense": counted[0], "sparse": counted[1]}}
		return writeJSON(*jsonOut, out, stdout)
	}
	return nil
}

// stepBenchSpec is a step benchmark in the command line's terms.
type stepBenchSpec struct {
	shape                                                  string // built-in name or config.json
	layers, first, batch, seq, output, padding, rank, reps int
	sparsity, targets                                      string
	bf16                                                   bool
}

// settings builds the benchmark's settings (its analytic FLOPs included),
// returning also the table layer the first built layer takes its sparsity
// from and the table.
func (s stepBenchSpec) settings() (train.BenchSettings, int, *predictor.SparsityConfig, error) {
	cfg, err := model.BuiltinShape(s.shape)
	if err != nil && (strings.HasSuffix(s.shape, ".json") || strings.ContainsRune(s.shape, os.PathSeparator)) {
		cfg, err = model.LoadConfig(s.shape)
	}
	if err != nil {
		return train.BenchSettings{}, 0, nil, err
	}
	table, err := predictor.OpenSparsityConfig(s.sparsity)
	if err != nil {
		return train.BenchSettings{}, 0, nil, err
	}
	targets, err := lora.ParseTargets(s.targets)
	if err != nil {
		return train.BenchSettings{}, 0, nil, err
	}
	sparsity, start := train.BenchSparsity(table, s.first, s.layers)
	cfg.NumHiddenLayers = s.layers
	dtype := gpu.F32
	if s.bf16 {
		dtype = gpu.BF16
	}
	b := train.BenchBatch(s.batch, s.seq, s.output, s.padding, cfg.VocabSize)
	stepShape, err := predictor.BatchShape(b, cfg.VocabSize)
	if err != nil {
		return train.BenchSettings{}, 0, nil, err
	}
	sparsity.SkipOutputTokens = table.SkipOutputTokens
	flops, err := predictor.StepFLOPs(cfg, stepShape, predictor.LoRATargets{Rank: s.rank, Targets: targets}, sparsity)
	if err != nil {
		return train.BenchSettings{}, 0, nil, err
	}
	return train.BenchSettings{Config: cfg, DType: dtype, LoRA: lora.Config{Rank: s.rank, Alpha: float64(2 * s.rank), Targets: targets},
		Sparsity: sparsity, Batch: b, Reps: s.reps, FLOPs: flops}, start, table, nil
}

// printProfile prints the GPU time per kind of kernel of the dense and the
// sparse step side by side.
func printProfile(w io.Writer, counted [2]train.RecordedFLOPs) error {
	if len(counted[0].Profile) == 0 {
		fmt.Fprintln(w, "(no GPU timestamps on this adapter: no kernel profile)")
		return nil
	}
	fmt.Fprintln(w, "GPU time per kind of kernel, one step (each dispatch in its own timed pass):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kernel	dense: n	ms	GFLOP	GFLOP/s	sparse: n	ms	GFLOP	GFLOP/s	")
	byKind := map[string][2]train.KernelTime{}
	for v, c := range counted {
		for _, k := range c.Profile {
			pair := byKind[k.Kind]
			pair[v] = k
			byKind[k.Kind] = pair
		}
	}
	var total [2]train.KernelTime
	cell := func(k train.KernelTime) string {
		rate := 0.0
		if k.MS > 0 {
			rate = k.FLOPs / 1e9 / (k.MS / 1e3)
		}
		return fmt.Sprintf("%d\t%.1f\t%.3f\t%.2f", k.Dispatches, k.MS, k.FLOPs/1e9, rate)
	}
	for _, kind := range slices.Sorted(maps.Keys(byKind)) {
		pair := byKind[kind]
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", kind, cell(pair[0]), cell(pair[1]))
		for v := range total {
			total[v].Dispatches += pair[v].Dispatches
			total[v].MS += pair[v].MS
			total[v].FLOPs += pair[v].FLOPs
		}
	}
	fmt.Fprintf(tw, "all kernels\t%s\t%s\t\n", cell(total[0]), cell(total[1]))
	return tw.Flush()
}

// printCounted prints the analytic FLOPs of each layer next to those of the
// dispatches a step recorded (train.CompareFLOPs).
func printCounted(w io.Writer, flops predictor.FLOPReport, counted [2]train.RecordedFLOPs) error {
	const giga = 1e9
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "part\tdense analytic GFLOP\tdense recorded\trecorded/analytic\tsparse analytic\tsparse recorded\trecorded/analytic\t")
	for _, r := range train.CompareFLOPs(flops, counted) {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.4f\t%.3f\t%.3f\t%.4f\t\n", r.Part, r.DenseAnalytic/giga, r.DenseRecorded/giga, r.DenseRecorded/r.DenseAnalytic,
			r.SparseAnalytic/giga, r.SparseRecorded/giga, r.SparseRecorded/r.SparseAnalytic)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "recorded: 2 m n k of every GEMM dispatch (index-list counts read back), causal pairs of the attention kernels, and the")
	fmt.Fprintln(w, "analytic share of the predictor's selection kernels (not GEMMs)")
	return nil
}
