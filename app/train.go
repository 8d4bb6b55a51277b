package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"gopkg.in/yaml.v3"

	"github.com/sparselora/sparselora/app/window"
	"github.com/sparselora/sparselora/dist"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/plot"
	"github.com/sparselora/sparselora/train"
)

const trainSynopsis = `train --model DIR --data FILE.jsonl --out DIR [--config train.yaml] [flags]

Fine-tunes a LoRA adapter (PEFT format) on a Hugging Face model directory with
SparseLoRA. The run directory receives adapter_model.safetensors +
adapter_config.json, metrics.jsonl, train_config.yaml and checkpoint-<step>/.
Ctrl-C (or SIGTERM, SIGHUP) finishes the current step, writes a checkpoint and
exits 130; --resume continues from the newest checkpoint. A run directory
holding an earlier run's results is refused unless --resume or --overwrite.

Data parallel on several GPUs or hosts: mpirun -np N sparselora train ...
(Open MPI; one process per GPU, each taking the adapter of its local rank
unless --gpu is given; --batch-size is per process).`

// trainFlags registers every train.Config field as a flag named as its YAML
// key, so --config files and flags share one spelling.
func trainFlags(fs *flag.FlagSet, c *train.Config) {
	fs.StringVar(&c.Model, "model", c.Model, "Hugging Face model directory (config.json, safetensors, tokenizer.json), or a GGUF file (llama/qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
	fs.StringVar(&c.Data, "data", c.Data, "training data, JSONL: text | prompt+completion | messages | instruction+output | input_ids")
	fs.StringVar(&c.Out, "out", c.Out, "run directory (adapter, metrics, checkpoints)")
	fs.StringVar(&c.AdapterInit, "adapter-init", c.AdapterInit, "start from this PEFT adapter (its rank, alpha and targets) instead of a fresh one")
	fs.StringVar(&c.Tokenizer, "tokenizer", c.Tokenizer, "directory of tokenizer.json when --model has none (default: --model)")
	fs.BoolVar(&c.Full, "full", c.Full, "train every weight (full-parameter) instead of LoRA; --out receives an HF checkpoint")
	fs.StringVar(&c.InitConfig, "init-config", c.InitConfig, "with --full: start from random weights of this config.json (initializer_range) instead of --model")
	fs.IntVar(&c.Rank, "rank", c.Rank, "LoRA rank r")
	fs.Float64Var(&c.Alpha, "alpha", c.Alpha, "LoRA alpha (scale alpha/r)")
	fs.StringVar(&c.Targets, "targets", c.Targets, "LoRA target modules: q,k,v,o,gate,up,down (or q_proj,...), or all")
	fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "examples per micro-batch")
	fs.IntVar(&c.GradAccum, "grad-accum", c.GradAccum, "micro-batches per optimizer step")
	fs.IntVar(&c.Epochs, "epochs", c.Epochs, "passes over the data")
	fs.IntVar(&c.MaxSteps, "max-steps", c.MaxSteps, "optimizer steps (overrides --epochs when > 0)")
	fs.Float64Var(&c.LR, "lr", c.LR, "peak learning rate")
	fs.StringVar(&c.Schedule, "schedule", c.Schedule, "learning-rate schedule: constant, linear or cosine")
	fs.IntVar(&c.WarmupSteps, "warmup-steps", c.WarmupSteps, "linear warm-up steps")
	fs.Float64Var(&c.WarmupRatio, "warmup-ratio", c.WarmupRatio, "warm-up as a fraction of the steps (instead of --warmup-steps)")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW weight decay")
	fs.Float64Var(&c.MaxGradNorm, "max-grad-norm", c.MaxGradNorm, "clip the global gradient norm to this (0: no clipping)")
	fs.BoolVar(&c.NoShuffle, "no-shuffle", c.NoShuffle, "keep the file order (otherwise a seeded permutation per epoch)")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the data order and the LoRA initialisation")
	fs.IntVar(&c.MaxSeqLen, "max-seq-len", c.MaxSeqLen, "truncate examples to this many tokens")
	fs.BoolVar(&c.SkipBadLines, "skip-bad-lines", c.SkipBadLines, "skip malformed data lines (counted) instead of failing")
	fs.StringVar(&c.Sparsity, "sparsity", c.Sparsity, "SparseLoRA: auto, dense, a built-in table (e.g. llama3-8b-math10k) or a YAML file")
	fs.StringVar(&c.SVDCacheDir, "svd-cache", c.SVDCacheDir, "folder of the SVD estimator cache (default: the user cache folder)")
	fs.BoolVar(&c.VerifySVDCache, "verify-svd-cache", c.VerifySVDCache, "check a cached SVD against the weights' content (reads them all) instead of trusting the files' size, time and header")
	fs.StringVar(&c.EvalData, "eval-data", c.EvalData, "evaluation data, JSONL (same formats)")
	fs.IntVar(&c.EvalEvery, "eval-every", c.EvalEvery, "evaluate every N steps (0: at the end)")
	fs.StringVar(&c.EvalMetric, "eval-metric", c.EvalMetric, "loss or exact-match (greedy completions vs the examples' answers)")
	fs.IntVar(&c.EvalMaxNewTokens, "eval-max-new-tokens", c.EvalMaxNewTokens, "most tokens generated per example with --eval-metric exact-match")
	fs.IntVar(&c.SaveEvery, "save-every", c.SaveEvery, "write a checkpoint every N steps (0: none, except on interrupt); the trained parameters are always saved at the end")
	fs.IntVar(&c.Keep, "keep", c.Keep, "checkpoints kept")
	fs.BoolVar(&c.Resume, "resume", c.Resume, "continue from the newest checkpoint in --out (refused when the model, the data or a setting changed)")
	fs.BoolVar(&c.Overwrite, "overwrite", c.Overwrite, "replace the results of an earlier run in --out (adapter, metrics, checkpoints)")
	fs.BoolVar(&c.Verify, "verify", c.Verify, "fingerprint the base model by its content (reads every weight file) as well as its files' size, time and header, so --resume accepts a copied model")
	fs.IntVar(&c.LogEvery, "log-every", c.LogEvery, "read the loss back and log every N steps")
	fs.BoolVar(&c.BF16, "bf16", c.BF16, "keep frozen weights as bf16 on the GPU (compute stays f32)")
	fs.BoolVar(&c.GradCheckpoint, "grad-checkpoint", c.GradCheckpoint, "keep only each decoder layer's input and recompute its forward in backward (same results, less memory; each layer but the last runs its forward twice: about 1.5x the FLOPs of a LoRA step)")
	fs.IntVar(&c.CheckpointEvery, "checkpoint-every", c.CheckpointEvery, "with --grad-checkpoint: keep the input of every N-th layer only (default 1: every layer's); backward replays the N-1 layers between, bit-identical results; the plan suggests the N that keeps the fewest inputs")
	fs.StringVar(&c.MemoryLimit, "memory-limit", c.MemoryLimit, "GPU memory the run may use, e.g. 16GiB (default: the adapter's reported memory, if any); a run whose plan exceeds it is refused before it allocates")
	fs.IntVar(&c.Quantize, "quantize", c.Quantize, "quantize the frozen f32/bf16/f16 weights at load to 4 or 8 bits (MLX's affine format and rounding; 0: as stored)")
	fs.IntVar(&c.GroupSize, "group-size", c.GroupSize, "inputs per quantization group with --quantize: 32, 64 or 128")
}

func runTrain(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := newFlags("train", trainSynopsis, stdout, stderr)
	cfg := train.DefaultConfig()
	trainFlags(fs, &cfg)
	configFile := fs.String("config", "", "YAML file with the same keys as these flags (flags given here win)")
	noWindow := fs.Bool("no-window", false, "train headless (no live-metrics window)")
	dryRun := fs.Bool("dry-run", false, "print the run's GPU memory plan by part and exit (reads the data, needs no GPU)")
	mpiTimeout := fs.Duration("mpi-timeout", dist.DefaultTimeout, "under mpirun: end the job when a process waits this long for the others in one exchange")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	if *configFile != "" {
		if err := applyConfigFile(fs, *configFile); err != nil {
			return err
		}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Model, err = ggufModel(cfg.Model, stdout); err != nil {
		return err
	}
	if *dryRun {
		plan, err := train.DryRun(ctx, cfg, gpu.Limits{})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "model: %s; batch %d x %d tokens, grad-accum %d\n", plan.ModelDir, cfg.BatchSize, plan.Seq, cfg.GradAccum)
		printMemoryPlan(stdout, plan.Memory)
		limit, _ := train.ParseSize(cfg.MemoryLimit) // Validate checked it
		return train.CheckMemory(plan.Config, plan.MemorySettings, limit)
	}
	group, err := joinTrainGroup(*mpiTimeout, &df, stderr)
	if err != nil {
		return err
	}
	if group != nil {
		defer func() { err = group.leave(err) }()
		cfg.Group = group.comm
		if !group.lead() {
			// Rank 0 reports for the job.
			stdout = io.Discard
		}
	}
	dev, closeDev, err := df.open()
	if err != nil {
		return group.openDeviceError(&df, err)
	}
	defer closeDev()
	// The window's q cancels this context when the command was not started
	// through window.Serve (under Serve it cancels the command's).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A closed stdout must not end the run (metrics.jsonl has the log too).
	stdout = &fallbackWriter{w: stdout, fallback: stderr}
	view := newTrainView(stdout, stderr)
	hooks := view.hooks()
	if !group.lead() {
		hooks = train.Hooks{}
	}
	if group != nil && group.lead() {
		fmt.Fprintf(stdout, "data parallel: %d processes (mpirun), --batch-size %d each: %d examples per micro-batch\n",
			group.comm.Size(), cfg.BatchSize, group.comm.Size()*cfg.BatchSize)
	}
	if !*noWindow && group.lead() {
		if win, winHooks, err := openTrainWindow(ctx, cfg.Out, cancel); err != nil {
			fmt.Fprintf(stderr, "sparselora train: %v: training headless\n", err)
		} else {
			defer win.Close()
			hooks = chainHooks(hooks, winHooks)
		}
	}
	res, err := train.Run(ctx, dev, cfg, hooks)
	view.finish()
	if res != nil && group.lead() {
		writePlots(cfg.Out, stdout, stderr)
	}
	if errors.Is(err, train.ErrInterrupted) {
		fmt.Fprintf(stdout, "interrupted after step %d; checkpoint %s\n", res.Steps, res.LastCheckpnt)
		if ctx.Err() == nil && group != nil {
			return fmt.Errorf("%w: %w", err, errStoppedWithJob)
		}
		return fmt.Errorf("%w: %w", err, ctx.Err())
	}
	var gpuErr *gpu.Error
	if errors.As(err, &gpuErr) && gpuErr.Type == "out-of-memory" {
		return fmt.Errorf("the GPU ran out of memory: %w; checkpoints already in %s are intact (see sparselora plan, --grad-checkpoint, --memory-limit)", err, cfg.Out)
	}
	if err != nil {
		return err
	}
	if p := view.plan; p.ResumedFrom != "" && p.StartStep >= p.TotalSteps {
		fmt.Fprintf(stdout, "nothing to resume: the run finished at step %d; its final loss %.4f (%s)\n", p.StartStep, res.FinalLoss, train.MetricsFileName)
		return nil
	}
	fmt.Fprintf(stdout, "done: %d steps in %s, %.0f tokens/s; final loss %.4f", res.Steps, res.Wall.Round(time.Second), res.TokensPerS, res.FinalLoss)
	if res.Eval != nil {
		fmt.Fprintf(stdout, ", eval loss %.4f (perplexity %.2f)", res.Eval.Loss, res.Eval.Perplexity)
	}
	if em := res.ExactMatch; em != nil {
		fmt.Fprintf(stdout, ", exact match %d/%d = %.1f %% (95 %% CI %.1f-%.1f %%)", em.Correct, em.N, 100*em.Accuracy, 100*em.Lo, 100*em.Hi)
	}
	what := "adapter (PEFT)"
	if cfg.Full {
		what = "model (HF checkpoint)"
	}
	fmt.Fprintf(stdout, "\nFLOPs sparse/dense (analytic, whole run): %.3f\n", res.FLOPsRatio)
	if res.StepMeasured > 0 {
		// The recorded dispatches include checkpointing's recomputed
		// forwards, which the analytic step leaves out.
		recompute := ""
		if cfg.GradCheckpoint {
			recompute = " (with the recomputed forwards of --grad-checkpoint)"
		}
		fmt.Fprintf(stdout, "FLOPs sparse/dense of one sparse step: analytic %.3f, measured from the recorded dispatches %.3f%s\n", res.StepAnalytic, res.StepMeasured, recompute)
	}
	fmt.Fprintf(stdout, "%s: %s\n", what, res.AdapterDir)
	return nil
}

// openTrainWindow opens the live-metrics window of a run writing into
// runDir, when there is a display to show it on.
func openTrainWindow(ctx context.Context, runDir string, stop func()) (*window.Window, train.Hooks, error) {
	if err := window.CheckDisplay(); err != nil {
		return nil, train.Hooks{}, err
	}
	monitor := window.NewMonitor(runDir)
	win, err := window.Open(ctx, monitor, window.Options{Title: "sparselora train: " + runDir, Stop: stop})
	if err != nil {
		return nil, train.Hooks{}, err
	}
	return win, monitor.Hooks(), nil
}

// chainHooks returns hooks that call a's then b's; SaveNow asks both (so
// neither loses a request) and saves when either asks.
func chainHooks(a, b train.Hooks) train.Hooks {
	return train.Hooks{
		Start:      chain1(a.Start, b.Start),
		SVD:        chain2(a.SVD, b.SVD),
		Note:       chain1(a.Note, b.Note),
		Step:       chain3(a.Step, b.Step),
		Log:        chain1(a.Log, b.Log),
		Checkpoint: chain1(a.Checkpoint, b.Checkpoint),
		Pause:      chain1(a.Pause, b.Pause),
		SaveNow: func() bool {
			saveA := a.SaveNow != nil && a.SaveNow()
			saveB := b.SaveNow != nil && b.SaveNow()
			return saveA || saveB
		},
	}
}

func chain1[T any](a, b func(T)) func(T) {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return func(x T) { a(x); b(x) }
}

func chain2[T, U any](a, b func(T, U)) func(T, U) {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return func(x T, y U) { a(x, y); b(x, y) }
}

func chain3[T, U, V any](a, b func(T, U, V)) func(T, U, V) {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return func(x T, y U, z V) { a(x, y, z); b(x, y, z) }
}

// applyConfigFile sets every flag named by a key of a YAML file, unless the
// command line set it.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return fmt.Errorf("--config %s: line %d: want a mapping of flag names to values", path, top.Line)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	seen := map[string]int{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		key, value := top.Content[i], top.Content[i+1]
		f := fs.Lookup(key.Value)
		if f == nil || key.Value == "config" {
			hint := ""
			if alt := strings.ReplaceAll(key.Value, "_", "-"); alt != key.Value && fs.Lookup(alt) != nil {
				hint = fmt.Sprintf("; did you mean %s?", alt)
			}
			return fmt.Errorf("--config %s: line %d: unknown key %q (the keys are the train flags%s)", path, key.Line, key.Value, hint)
		}
		if line, dup := seen[key.Value]; dup {
			return fmt.Errorf("--config %s: line %d: %s is already set on line %d", path, key.Line, key.Value, line)
		}
		seen[key.Value] = key.Line
		if value.Kind != yaml.ScalarNode {
			return fmt.Errorf("--config %s: line %d: %s wants a single value", path, value.Line, key.Value)
		}
		if given[key.Value] {
			continue
		}
		if err := f.Value.Set(value.Value); err != nil {
			return fmt.Errorf("--config %s: line %d: %s: %q is not a valid value (%v)", path, value.Line, key.Value, value.Value, err)
		}
	}
	return nil
}

// trainView prints a run: the start-up report, then a progress bar on a
// terminal or one plain line per logged step elsewhere, and the records.
type trainView struct {
	stdout, stderr io.Writer
	terminal       bool
	bar            *progressbar.ProgressBar
	last           train.Record
	plan           train.Plan
}

func newTrainView(stdout, stderr io.Writer) *trainView {
	return &trainView{stdout: stdout, stderr: stderr, terminal: isTerminal(stderr)}
}

func (v *trainView) hooks() train.Hooks {
	return train.Hooks{
		Start: v.start,
		SVD:   progress(v.stderr, "SVD estimator"),
		Step: func(step, total int, epoch float64) {
			if v.bar == nil {
				return
			}
			v.bar.Set(step)
		},
		Note: func(line string) { v.println("%s", line) },
		Log:  v.log,
		Checkpoint: func(dir string) {
			v.println("checkpoint %s", dir)
		},
	}
}

func (v *trainView) println(format string, args ...any) {
	if v.bar != nil {
		v.bar.Clear()
	}
	fmt.Fprintf(v.stdout, format+"\n", args...)
}

func (v *trainView) start(p train.Plan) {
	v.plan = p
	w := v.stdout
	fmt.Fprintf(w, "adapter: %s (%s, %s)\n", p.Adapter.Name(), p.Adapter.Backend, p.Adapter.Description)
	c := p.Config
	fmt.Fprintf(w, "model: %s (%s, %d layers, hidden %d, vocab %d)\n", p.ModelDir, c.Architecture, c.NumHiddenLayers, c.HiddenSize, c.VocabSize)
	for _, warning := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	fmt.Fprintf(w, "parameters: %s trainable of %s (%.3f%%)\n", countString(p.Trainable), countString(p.Total), 100*float64(p.Trainable)/float64(p.Total))
	fmt.Fprintf(w, "GPU memory (plan): peak %s (frozen weights %s, saved activations %s)\n", memString(p.Memory.PeakBytes),
		memString(p.Memory.Part("frozen weights")), memString(p.Memory.Part("saved activations")))
	d := p.TrainData
	fmt.Fprintf(w, "data: %s: %d examples (%s), %d tokens, %d scored; padded to %d tokens", d.Path, len(d.Examples), d.Format, d.Tokens, d.ScoredTokens, p.Seq)
	if d.Truncated > 0 {
		fmt.Fprintf(w, "; %d truncated by --max-seq-len", d.Truncated)
	}
	if d.Skipped > 0 {
		fmt.Fprintf(w, "; %d bad lines skipped", d.Skipped)
	}
	fmt.Fprintln(w)
	for _, e := range d.SkipErrors {
		fmt.Fprintf(w, "  skipped: %v\n", e)
	}
	if e := p.EvalData; e != nil {
		fmt.Fprintf(w, "eval data: %s: %d examples, %d scored tokens\n", e.Path, len(e.Examples), e.ScoredTokens)
	}
	fmt.Fprintf(w, "optimizer steps: %d (%d per epoch)", p.TotalSteps, p.StepsPerEp)
	if p.ResumedFrom != "" {
		fmt.Fprintf(w, "; resuming at step %d from %s", p.StartStep, p.ResumedFrom)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "sparsity: %s", p.Sparsity)
	if p.SparseFrom < p.TotalSteps {
		fmt.Fprintf(w, "; dense warm-up for %d steps, sparse from step %d", p.SparseFrom, p.SparseFrom+1)
	}
	fmt.Fprintln(w)
	if v.terminal {
		v.bar = progressbar.NewOptions(p.TotalSteps, progressbar.OptionSetWriter(v.stderr), progressbar.OptionSetDescription("training"),
			progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond))
		v.bar.Set(p.StartStep)
	}
}

func (v *trainView) log(r train.Record) {
	v.last = r
	line := fmt.Sprintf("step %d  epoch %.2f  loss %.4f  lr %.3g  grad norm %.3f  %.0f tokens/s  %.0f ms/step  FLOPs %.2f",
		r.Step, r.Epoch, r.Loss, r.LR, r.GradNorm, r.TokensPerS, r.MSPerStep, r.FLOPsRatio)
	if r.EvalLoss != nil {
		line += fmt.Sprintf("  eval loss %.4f", *r.EvalLoss)
	}
	if r.EvalAccuracy != nil {
		line += fmt.Sprintf("  exact match %.1f %%", 100**r.EvalAccuracy)
	}
	if v.bar != nil {
		v.bar.Describe(fmt.Sprintf("loss %.4f lr %.2g %.0f tok/s", r.Loss, r.LR, r.TokensPerS))
		if r.EvalLoss == nil && r.EvalAccuracy == nil {
			return
		}
	}
	v.println("%s", line)
}

func (v *trainView) finish() {
	if v.bar != nil {
		v.bar.Finish()
		fmt.Fprintln(v.stderr)
	}
}

// writePlots draws the run's charts and summary.md; a failure is reported but
// does not fail the run, whose adapter is already written.
func writePlots(dir string, stdout, stderr io.Writer) {
	recs, err := plot.ReadMetrics(filepath.Join(dir, train.MetricsFileName))
	if err == nil && len(recs) > 0 {
		_, err = plot.WriteRun(dir, recs)
	}
	if err != nil {
		fmt.Fprintf(stderr, "warning: plots of %s: %v\n", dir, err)
		return
	}
	fmt.Fprintf(stdout, "plots and summary.md: %s\n", dir)
}
