package app

import (
	"context"
	"fmt"
	"io"
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
	first := fs.Int("first-layer", -1, "sparsity-table layer that the first built layer takes its sparsity from (-1: the first layer whose FFN and attention are both sparse)")
	batch := fs.Int("batch", 1, "sequences per batch")
	seq := fs.Int("seq", 256, "tokens per sequence")
	output := fs.Int("output-tokens", 64, "scored (output) tokens at the end of each sequence")
	sparsityName := fs.String("sparsity", "llama3-8b-math10k", "sparsity table: a built-in name or a YAML file")
	rank := fs.Int("rank", 32, "LoRA rank")
	targetsFlag := fs.String("targets", "q,k,v,o", "LoRA target modules")
	bf16 := fs.Bool("bf16", true, "store frozen weights as bf16 (f32 otherwise)")
	reps := fs.Int("reps", 3, "timed steps per variant (after one warm-up step)")
	jsonOut := fs.String("json", "bench-step.json", "write results as JSON to this file (empty: don't)")
	var df deviceFlags
	df.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *layers <= 0 || *batch <= 0 || *seq <= 1 || *output <= 0 || *output >= *seq || *reps <= 0 || *rank <= 0 {
		return fmt.Errorf("want --layers, --batch, --reps, --rank > 0 and 0 < --output-tokens < --seq")
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

	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeDev()
	fmt.Fprintf(stdout, "adapter: %s (%s, %s, %s)\n", dev.Info.Name(), dev.Info.Backend, dev.Info.Type, dev.Info.Description)
	fmt.Fprintf(stdout, "model: %s shapes, %d layers (sparsity of table layers %d-%d of %s), weights %s; batch %d x %d, %d output tokens; LoRA r=%d on %s\n",
		*shape, *layers, start, start+*layers-1, *sparsityName, dtype, *batch, *seq, *output, *rank, *targetsFlag)
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
	opt, err := lora.NewOptimizer(dev, adapters.Params(), lora.DefaultAdamWConfig())
	if err != nil {
		return err
	}
	defer opt.Release()
	ws, err := m.NewWorkspace(*batch, *seq)
	if err != nil {
		return err
	}
	defer ws.Release()
	b := model.Batch{Rows: *batch, Seq: *seq}
	for i := range T {
		b.InputIDs = append(b.InputIDs, int32((i*7919+13)%cfg.VocabSize))
		b.Mask = append(b.Mask, 1)
		label := int32(-100)
		if i%*seq >= *seq-*output {
			label = b.InputIDs[i]
		}
		b.Labels = append(b.Labels, label)
	}
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
			Progress: predictor.ProgressBar(stderr, "SVD estimator", 30)})
		if err != nil {
			return err
		}
		defer est.Release()
		sel, err := predictor.NewSelector(dev, cfg, sparsity.Layers, predictor.EstimatorFactors(est), T, *batch, predictor.SelectOptions{})
		if err != nil {
			return err
		}
		defer sel.Release()
		selector = sel
	}
	fmt.Fprintf(stdout, "setup (random weights, SVD factors): %.1f s\n", time.Since(setup).Seconds())

	flops, err := predictor.StepFLOPs(cfg, predictor.StepShape{Rows: *batch, Seq: *seq, RealTokens: T,
		ContextTokens: ws.Tokens.ContextCount, ScoredTokens: ws.Tokens.ScoredCount},
		predictor.LoRATargets{Rank: *rank, Targets: targets}, sparsity)
	if err != nil {
		return err
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
	var results []stepResult
	for _, v := range []struct {
		name  string
		sel   model.ChannelSelector
		flops float64
	}{{"dense LoRA", nil, flops.Dense}, {"SparseLoRA", selector, flops.Sparse}} {
		if err := step(v.sel); err != nil { // warm-up: pipelines compile here
			return fmt.Errorf("%s: %w", v.name, err)
		}
		times := make([]time.Duration, *reps)
		for i := range times {
			start := time.Now()
			if err := step(v.sel); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			times[i] = time.Since(start)
		}
		slices.Sort(times)
		med := times[len(times)/2].Seconds()
		r := stepResult{Variant: v.name, Reps: *reps, MedianMS: med * 1e3, TokensPerSec: float64(T) / med,
			FLOPs: v.flops, TFLOPS: v.flops / med / 1e12}
		if len(results) > 0 {
			r.Speedup = results[0].MedianMS / r.MedianMS
		}
		results = append(results, r)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tms/step\ttokens/s\tGFLOP/step\tTFLOP/s\tspeed-up\t")
	for _, r := range results {
		speed := ""
		if r.Speedup > 0 {
			speed = fmt.Sprintf("%.2fx", r.Speedup)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.4f\t%s\t\n", r.Variant, r.MedianMS, r.TokensPerSec, r.FLOPs/1e9, r.TFLOPS, speed)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "FLOPs sparse/dense: %.3f (wall-clock timing: submit to queue idle, median of %d)\n", flops.Ratio, *reps)
	if err := flops.Table(stdout); err != nil {
		return err
	}
	if *jsonOut != "" {
		out := map[string]any{"adapter": dev.Info, "date": time.Now().UTC().Format(time.RFC3339), "shape": *shape,
			"layers": *layers, "table_layers": []int{start, start + *layers - 1}, "sparsity": *sparsityName,
			"batch": *batch, "seq": *seq, "output_tokens": *output, "lora_rank": *rank, "lora_targets": *targetsFlag,
			"weights": dtype.String(), "flops_ratio": flops.Ratio, "results": results}
		return writeJSON(*jsonOut, out, stdout)
	}
	return nil
}

// benchSparsity maps the n built layers onto table layers start.. and returns
// the table renumbered for the built model (mode, rank and flags kept).
func benchSparsity(table *predictor.SparsityConfig, first, n int) (*predictor.SparsityConfig, int) {
	start := first
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
