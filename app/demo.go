package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sparselora/sparselora/data/synth"
	"github.com/sparselora/sparselora/evaluate"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/plot"
	"github.com/sparselora/sparselora/train"
)

const demoSynopsis = `demo [--model models/tiny] [--out runs/demo] [flags]

The built-in default: fine-tunes the project's tiny base model on the built-in
task (arithmetic word problems) twice, with dense LoRA and with SparseLoRA (the model's
sparsity.yaml), measures exact match on the held-out split before and after,
and prints one table of accuracy, speed and FLOPs. Each run's folder gets its
charts and summary.md, and OUT/comparison.png sets the two runs side by side
(loss against step and time, exact match, step time). It ends with the speed-up
of one SparseLoRA training step over dense LoRA on a larger layer shape
(--bench-shape), measured in the same run.`

// demoMaxNewTokens covers the worked answer of the arith task (" 7 + 1 = 8.
// The answer is 8.") and the lookup task's value.
const demoMaxNewTokens = 20

// demoVariant is one row of the demo's table.
type demoVariant struct {
	name       string
	acc        evaluate.Summary
	msPerStep  float64
	tokensPerS float64
	// flops is the whole run's analytic FLOP ratio against dense (warm-up
	// included); stepAnalytic and stepMeasured are one sparse step's, counted
	// and measured from the recorded dispatches.
	flops, stepAnalytic, stepMeasured float64
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", demoSynopsis, stdout, stderr)
	modelDir := fs.String("model", "models/tiny", "the base model (config.json, model.safetensors, tokenizer, sparsity.yaml)")
	out := fs.String("out", filepath.Join("runs", "demo"), "where the data, the two runs and the table go")
	task := fs.String("task", "arith", "built-in task: arith (word problems) or lookup")
	problemSteps := fs.Int("problem-steps", 1, "arith: operations on the asked quantity")
	distractors := fs.Int("distractors", 0, "arith: sentences about other people (context the answer does not need)")
	nTrain := fs.Int("train-examples", 1200, "training examples")
	nEval := fs.Int("eval-examples", 150, "held-out examples for exact match")
	steps := fs.Int("max-steps", 200, "optimizer steps of each fine-tuning run")
	seed := fs.Uint64("seed", 1, "seed of the data and the adapters")
	benchShape := fs.String("bench-shape", filepath.Join("configs", "bench", "llama-4layer-1024.json"), "layer shape (config.json or built-in name) of the closing step benchmark, dense against SparseLoRA; empty: skip it")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"train-examples", *nTrain}, {"eval-examples", *nEval}, {"max-steps", *steps}} {
		if c.v < 1 || c.v > 1_000_000 {
			return fmt.Errorf("--%s %d: want 1..1000000", c.name, c.v)
		}
	}
	sparsity := filepath.Join(*modelDir, "sparsity.yaml")
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json", "sparsity.yaml"} {
		if _, err := os.Stat(filepath.Join(*modelDir, f)); err != nil {
			return fmt.Errorf("--model %s: not the built-in model's directory (no %s); run from the repository root, or rebuild it with make base-model", *modelDir, f)
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	trainFile, evalFile := filepath.Join(*out, "train.jsonl"), filepath.Join(*out, "eval.jsonl")
	for _, f := range []struct {
		path  string
		n     int
		split synth.Split
	}{{trainFile, *nTrain, synth.Train}, {evalFile, *nEval, synth.Eval}} {
		opts := synth.DefaultOptions()
		opts.Steps, opts.Distractors = *problemSteps, *distractors
		examples, err := synth.Generate(ctx, *task, opts, f.n, *seed, f.split)
		if err != nil {
			return err
		}
		if err := writeJSONLFile(f.path, io.Discard, func(w io.Writer) error { return synth.WriteJSONL(w, examples) }); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "task %s: %d training and %d held-out examples in %s\n", *task, *nTrain, *nEval, *out)

	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeUnlessInterrupted(ctx, closeDev)
	fmt.Fprintf(stdout, "adapter: %s (%s)\n", dev.Info.Name(), dev.Info.Backend)

	start := time.Now()
	base, err := evaluate.ModelExactMatch(ctx, dev, *modelDir, evalFile, demoMaxNewTokens)
	if err != nil {
		return fmt.Errorf("base model: %w", err)
	}
	fmt.Fprintf(stdout, "base model: exact match %s\n", accuracyText(base))
	rows := []demoVariant{{name: "base model", acc: base}}
	compared := []plot.ComparedRun{{Name: "base model", Accuracy: base.Accuracy, AccuracyLo: base.Lo, AccuracyHi: base.Hi}}
	for _, v := range []struct{ name, sparsity string }{{"dense LoRA", "dense"}, {"SparseLoRA", sparsity}} {
		cfg := train.DefaultConfig()
		cfg.Model, cfg.Data, cfg.Out = *modelDir, trainFile, filepath.Join(*out, strings.ReplaceAll(strings.ToLower(v.name), " ", "-"))
		cfg.Rank, cfg.Alpha, cfg.Targets = 8, 16, "q,k,v,o,gate,up,down"
		cfg.BatchSize, cfg.MaxSteps, cfg.LR, cfg.WarmupSteps, cfg.Schedule = 8, *steps, 3e-3, 10, "linear"
		cfg.Seed, cfg.LogEvery, cfg.Sparsity = *seed, 10, v.sparsity
		cfg.EvalData, cfg.EvalMetric, cfg.EvalMaxNewTokens = evalFile, "exact-match", demoMaxNewTokens
		cfg.SVDCacheDir = filepath.Join(*out, "svd-cache")
		if err := os.RemoveAll(cfg.Out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d steps of batch %d ...\n", v.name, cfg.MaxSteps, cfg.BatchSize)
		res, err := train.Run(ctx, dev, cfg, train.Hooks{})
		if errors.Is(err, train.ErrInterrupted) {
			// The demo starts over each time: there is nothing to resume.
			return fmt.Errorf("%s: stopped by an interrupt; run the demo again to start over: %w", v.name, ctx.Err())
		}
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		if res.ExactMatch == nil {
			return fmt.Errorf("%s: no evaluation", v.name)
		}
		row := demoVariant{name: v.name, acc: *res.ExactMatch, flops: res.FLOPsRatio, stepAnalytic: res.StepAnalytic, stepMeasured: res.StepMeasured}
		// An unreadable metrics log leaves the speed columns at 0 and the run
		// without charts.
		recs, err := plot.ReadMetrics(filepath.Join(cfg.Out, train.MetricsFileName))
		if err == nil {
			row.msPerStep, row.tokensPerS = plot.SteadyThroughput(recs, v.sparsity != "dense")
		}
		writePlots(cfg.Out, stdout, stderr)
		compared = append(compared, plot.ComparedRun{Name: v.name, Records: recs, Accuracy: row.acc.Accuracy, AccuracyLo: row.acc.Lo, AccuracyHi: row.acc.Hi})
		fmt.Fprintf(stdout, "%s: exact match %s, %.0f ms/step\n", v.name, accuracyText(row.acc), row.msPerStep)
		rows = append(rows, row)
	}
	chart, err := plot.RenderComparison(compared, plot.ComparisonWidth, plot.ComparisonHeight)
	if err == nil {
		err = plot.WritePNG(filepath.Join(*out, demoChartName), chart)
	}
	if err != nil {
		return fmt.Errorf("the comparison chart: %w", err)
	}
	table := demoTable(rows)
	fmt.Fprintf(stdout, "\n%s\ncharts: %s (dense against SparseLoRA), and each run's folder\n", table, filepath.Join(*out, demoChartName))
	if *benchShape != "" {
		line, err := demoStepBench(ctx, dev, *benchShape, stderr)
		if err != nil {
			return fmt.Errorf("step benchmark: %w", err)
		}
		fmt.Fprintf(stdout, "\n%s\n", line)
		table += "\n" + line + "\n"
	}
	fmt.Fprintf(stdout, "total %s\n", time.Since(start).Round(time.Second))
	table += fmt.Sprintf("\n![dense LoRA against SparseLoRA](%s)\n", demoChartName)
	return writeJSONLFile(filepath.Join(*out, "table.md"), io.Discard, func(w io.Writer) error {
		_, err := io.WriteString(w, table)
		return err
	})
}

// demoChartName is the demo's comparison chart, in its output folder.
const demoChartName = "comparison.png"

// demoBench is the demo's closing step benchmark: two decoder layers of the
// shape taking the Math10K table's layers 14-15 (FFN 0.99, attention 0.75),
// LoRA r=32 on q,k,v,o, 2 rows of 256 tokens with 64 output tokens, one timed
// step of each variant; small enough to add about a minute on a 2-core CPU
// adapter, large enough that the frozen GEMMs, not fixed costs, dominate.
var demoBench = stepBenchSpec{layers: 2, first: 14, batch: 2, seq: 256, output: 64, rank: 32, reps: 1,
	sparsity: "llama3-8b-math10k", targets: "q,k,v,o", bf16: true}

// demoStepBench times one dense and one SparseLoRA step on random weights of
// shape and returns the line that reports the speed-up.
func demoStepBench(ctx context.Context, dev *gpu.Device, shape string, stderr io.Writer) (string, error) {
	spec := demoBench
	spec.shape = shape
	settings, start, _, err := spec.settings()
	if err != nil {
		return "", err
	}
	settings.TimingsOnly = true
	settings.SVD = progress(stderr, "SVD estimator")
	res, err := train.BenchStep(ctx, dev, settings)
	if err != nil {
		return "", err
	}
	dense, sparse := res.Timings[0], res.Timings[1]
	return fmt.Sprintf("one training step on %s (%d layers, sparsity of %s layers %d-%d, batch %d x %d, LoRA r=%d on %s):\n"+
		"dense LoRA %.0f ms, SparseLoRA %.0f ms: speed-up %.2fx (FLOPs sparse/dense %.3f, bound %.2fx)",
		shape, spec.layers, spec.sparsity, start, start+spec.layers-1, spec.batch, spec.seq, spec.rank, spec.targets,
		dense.MedianMS, sparse.MedianMS, sparse.Speedup, settings.FLOPs.Ratio, 1/settings.FLOPs.Ratio), nil
}

func accuracyText(s evaluate.Summary) string {
	return fmt.Sprintf("%.1f%% [%.1f, %.1f]", 100*s.Accuracy, 100*s.Lo, 100*s.Hi)
}

// demoTable is the markdown table of the demo's results.
func demoTable(rows []demoVariant) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| variant\t exact match (95% CI)\t ms/step\t tokens/s\t FLOPs vs dense: run (analytic)\t sparse step (analytic / measured)\t speed-up\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t")
	var dense float64
	for _, r := range rows {
		if r.name == "base model" {
			fmt.Fprintf(tw, "| %s\t %s\t -\t -\t -\t -\t -\t\n", r.name, accuracyText(r.acc))
			continue
		}
		speedup := "1.00x"
		if dense == 0 {
			dense = r.msPerStep
		} else if r.msPerStep > 0 {
			speedup = fmt.Sprintf("%.2fx", dense/r.msPerStep)
		}
		step := "-"
		if r.stepMeasured > 0 {
			step = fmt.Sprintf("%.3f / %.3f", r.stepAnalytic, r.stepMeasured)
		}
		fmt.Fprintf(tw, "| %s\t %s\t %.0f\t %.0f\t %.3f\t %s\t %s\t\n", r.name, accuracyText(r.acc), r.msPerStep, r.tokensPerS, r.flops, step, speedup)
	}
	tw.Flush()
	// tabwriter.Debug separates cells with '|'; the leading "| " and the
	// padding make a markdown table whose columns line up in a terminal.
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " |") + " |"
	}
	return strings.Join(lines, "\n") + "\n"
}
