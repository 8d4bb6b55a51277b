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
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

// stepResult is one variant of `bench step`.
type stepResult struct {
	Variant      string  `json:"variant"`
	Reps         int     `json:"reps"`
	MedianMS     float64 `json:"median_ms"`
	TokensPerSec float64 `json:"tokens_per_s"`
	FLOPs        float64 `json:"flops"`
	TFLOPS       float64 `json:"tflops"`
	Speedup      float64 `json:"speedup,omitempty"`
}

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
	cfg, err := model.BuiltinShape(*shape)
	if err != nil && (strings.HasSuffix(*shape, ".json") || strings.ContainsRune(*shape, os.PathSeparator)) {
		cfg, err = model.LoadConfig(*shape)
	}
	if err != nil {
		return err
	}
	table, err := predictor.OpenSparsityConfig(*sparsityName)
	if err != nil {
		return err
	}
	targets, err := lora.ParseTargets(*targetsFlag)
	if err != nil {
		return err
	}
	sparsity, start := benchSparsity(table, *first, *layers)
	cfg.NumHiddenLayers = *layers
	dtype := gpu.F32
	if *bf16 {
		dtype = gpu.BF16
	}

	b := benchBatch(*batch, *seq, *output, *padding, cfg.VocabSize)
	stepShape, err := predictor.BatchShape(b, cfg.VocabSize)
	if err != nil {
		return err
	}
	sparsity.SkipOutputTokens = table.SkipOutputTokens
	flops, err := predictor.StepFLOPs(cfg, stepShape, predictor.LoRATargets{Rank: *rank, Targets: targets}, sparsity)
	if err != nil {
		return err
	}
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
	fmt.Fprintf(stdout, "adapter: %s (%s, %s, %s)\n", dev.Info.Name(), dev.Info.Backend, dev.Info.Type, dev.Info.Description)
	fmt.Fprintf(stdout, "model: %s shapes, %d layers (sparsity of table layers %d-%d of %s), weights %s; batch %d x %d (%d padding), %d output tokens; LoRA r=%d on %s\n",
		*shape, *layers, start, start+*layers-1, *sparsityName, dtype, *batch, *seq, *padding, *output, *rank, *targetsFlag)
	setup := time.Now()
	m, err := model.NewRandom(dev, cfg, dtype, *seq, 1)
	if err != nil {
		return err
	}
	defer m.Release()
	T := *batch * *seq
	adapters, err := lora.NewSet(m, lora.Config{Rank: *rank, Alpha: float64(2 * *rank), Targets: targets}, 1)
	if err != nil {
		return err
	}
	defer adapters.Release()
	adapters.Attach(m)
	opt, err := optim.NewOptimizer(dev, adapters.Params(), optim.DefaultAdamWConfig())
	if err != nil {
		return err
	}
	defer opt.Release()
	ws, err := m.NewWorkspace(*batch, *seq)
	if err != nil {
		return err
	}
	defer ws.Release()
	if err := ws.Load(m, b); err != nil {
		return err
	}

	var estTargets []predictor.Target
	for layer, s := range sparsity.Layers {
		estTargets = append(estTargets, predictor.LayerTargets(layer, s.MLP > 0, s.Attention > 0)...)
	}
	var selector model.ChannelSelector
	if len(estTargets) > 0 {
		r := sparsity.Rank
		if r == 0 {
			r = 8
		}
		est, err := predictor.Estimate(ctx, dev, m, estTargets, r, predictor.EstimateOptions{NoCache: true,
			Progress: progress(stderr, "SVD estimator")})
		if err != nil {
			return err
		}
		defer est.Release()
		sel, err := predictor.NewSelector(dev, cfg, sparsity.Layers, predictor.EstimatorFactors(est), T, *batch,
			predictor.SelectOptions{SparseScoredTokens: !table.SkipOutputTokens})
		if err != nil {
			return err
		}
		defer sel.Release()
		selector = sel
	}
	fmt.Fprintf(stdout, "setup (random weights, SVD factors): %.1f s\n", time.Since(setup).Seconds())

	if ws.Tokens.RealCount != stepShape.RealTokens || ws.Tokens.ScoredCount != stepShape.ScoredTokens {
		return fmt.Errorf("the workspace counts %d real and %d scored tokens, the FLOP model %d and %d",
			ws.Tokens.RealCount, ws.Tokens.ScoredCount, stepShape.RealTokens, stepShape.ScoredTokens)
	}
	trainer, err := train.NewTrainer(m, adapters, opt, ws)
	if err != nil {
		return err
	}
	defer trainer.Release()
	step := func(sel model.ChannelSelector) error {
		if err := trainer.Step([]model.Batch{b}, 1e-4, sel); err != nil {
			return err
		}
		return dev.Sync(ctx)
	}
	variants := []struct {
		name  string
		sel   model.ChannelSelector
		flops float64
	}{{"dense LoRA", nil, flops.Dense}, {"SparseLoRA", selector, flops.Sparse}}
	for _, v := range variants {
		if err := step(v.sel); err != nil { // warm-up: pipelines compile here
			return fmt.Errorf("%s: %w", v.name, err)
		}
	}
	// Repetitions alternate between the variants, so that a change in the
	// machine's load hits both alike.
	times := make([][]time.Duration, len(variants))
	for range *reps {
		for i, v := range variants {
			start := time.Now()
			if err := step(v.sel); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	var results []stepResult
	for i, v := range variants {
		slices.Sort(times[i])
		med := times[i][len(times[i])/2].Seconds()
		r := stepResult{Variant: v.name, Reps: *reps, MedianMS: med * 1e3, TokensPerSec: float64(stepShape.RealTokens) / med,
			FLOPs: v.flops, TFLOPS: v.flops / med / 1e12}
		if len(results) > 0 {
			r.Speedup = results[0].MedianMS / r.MedianMS
		}
		results = append(results, r)
	}
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
	fmt.Fprintf(stdout, "FLOPs sparse/dense: %.3f (wall-clock timing: submit to queue idle, median of %d)\n", flops.Ratio, *reps)
	if len(results) == 2 && flops.Ratio > 0 {
		fmt.Fprintf(stdout, "speed-up %.2fx = %.0f %% of the FLOP bound %.2fx (the gathered path's efficiency per useful FLOP relative to the dense path's)\n",
			results[1].Speedup, 100*results[1].Speedup*flops.Ratio, 1/flops.Ratio)
	}
	if err := flops.Table(stdout); err != nil {
		return err
	}
	// Count the work one step really records: every GEMM's sizes with the
	// counts of its index lists read back, and the attention kernels' grids.
	var counted [2]train.RecordedFLOPs
	for i, sel := range []model.ChannelSelector{nil, selector} {
		if counted[i], err = train.CountStep(ctx, m, ws, b, sel); err != nil {
			return fmt.Errorf("counting the recorded work: %w", err)
		}
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
			"weights": dtype.String(), "flops_ratio": flops.Ratio, "results": results, "padding": *padding,
			"flops": flops, "recorded_flops": map[string]any{"dense": counted[0], "sparse": counted[1]}}
		return writeJSON(*jsonOut, out, stdout)
	}
	return nil
}

// benchSparsity maps the n built layers onto table layers start.. and returns
// the table renumbered for the built model (mode, rank and flags kept).
func benchSparsity(table *predictor.SparsityConfig, first, n int) (*predictor.SparsityConfig, int) {
	start := first
	if start < 0 && len(table.Layers) > 0 && n > slices.Max(slices.Collect(maps.Keys(table.Layers))) {
		start = 0 // the built model holds the whole table
	}
	if start < 0 {
		start = 0
		var both []int
		for layer, s := range table.Layers {
			if s.MLP > 0 && s.Attention > 0 {
				both = append(both, layer)
			}
		}
		if len(both) == 0 {
			for layer, s := range table.Layers {
				if s.MLP > 0 || s.Attention > 0 {
					both = append(both, layer)
				}
			}
		}
		if len(both) > 0 {
			start = slices.Min(both)
		}
	}
	out := *table
	out.Layers = map[int]predictor.LayerSparsity{}
	for i := range n {
		if s, ok := table.Layers[start+i]; ok && (s.MLP > 0 || s.Attention > 0) {
			out.Layers[i] = s
		}
	}
	return &out, start
}

// benchBatch is the synthetic batch of bench step: rows of seq positions, the
// last padding of them padding, and the output tokens just before the padding
// labelled (their predecessors are the scored positions).
func benchBatch(rows, seq, output, padding, vocab int) model.Batch {
	b := model.Batch{Rows: rows, Seq: seq}
	for i := range rows * seq {
		pos := i % seq
		real := pos < seq-padding
		b.InputIDs = append(b.InputIDs, int32((i*7919+13)%vocab))
		b.Mask = append(b.Mask, map[bool]int32{true: 1}[real])
		label := int32(model.IgnoreLabel)
		if real && pos >= seq-padding-output {
			label = b.InputIDs[i]
		}
		b.Labels = append(b.Labels, label)
	}
	return b
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
// dispatches a step recorded. The selection kernels' share of the predictor
// (not GEMMs) is taken from the analytic count on both sides.
func printCounted(w io.Writer, flops predictor.FLOPReport, counted [2]train.RecordedFLOPs) error {
	const giga = 1e9
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "part\tdense analytic GFLOP\tdense recorded\trecorded/analytic\tsparse analytic\tsparse recorded\trecorded/analytic\t")
	row := func(name string, da, dr, sa, sr float64) {
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.4f\t%.3f\t%.3f\t%.4f\t\n", name, da/giga, dr/giga, dr/da, sa/giga, sr/giga, sr/sa)
	}
	var totals [4]float64
	for i, l := range flops.Layers {
		dr := counted[0].Layers[i] + l.DenseParts.PredictorKernels
		sr := counted[1].Layers[i] + l.SparseParts.PredictorKernels
		row(fmt.Sprintf("layer %d", i), l.Dense, dr, l.Sparse, sr)
		for j, v := range []float64{l.Dense, dr, l.Sparse, sr} {
			totals[j] += v
		}
	}
	row("lm_head", flops.LMHead, counted[0].Other, flops.LMHead, counted[1].Other)
	row("step", totals[0]+flops.LMHead, totals[1]+counted[0].Other, totals[2]+flops.LMHead, totals[3]+counted[1].Other)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "recorded: 2 m n k of every GEMM dispatch (index-list counts read back), causal pairs of the attention kernels, and the")
	fmt.Fprintln(w, "analytic share of the predictor's selection kernels (not GEMMs)")
	return nil
}
