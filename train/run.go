package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/evaluate"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/infer"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/tokenizer"
)

// ConfigFileName is the resolved configuration in the run directory.
const ConfigFileName = "train_config.yaml"

// ErrInterrupted is returned by Run when its context was cancelled (SIGINT,
// SIGTERM, the window's q): the current step finished and a checkpoint was
// written.
var ErrInterrupted = errors.New("training interrupted; resume with --resume")

// Plan is what a run is about to do, for the start-up report.
type Plan struct {
	Adapter   gpu.AdapterInfo
	ModelDir  string
	Config    *model.Config
	Warnings  []string
	Trainable int64
	Total     int64
	Memory    MemoryPlan
	// MemorySettings are what Memory was planned with.
	MemorySettings MemorySettings
	TrainData      *data.Dataset
	EvalData       *data.Dataset
	Seq            int
	StepsPerEp     int
	TotalSteps     int
	StartStep      int // > 0 when resuming
	ResumedFrom    string
	Sparsity       string // what --sparsity resolved to
	SparseFrom     int    // first sparse optimizer update (0-based); TotalSteps when never
}

// Hooks report a run's progress; any may be nil. They run on the training
// goroutine: keep them quick (the window copies what it needs and returns).
type Hooks struct {
	Start func(Plan)
	// SVD reports the estimator's progress (factors done of total).
	SVD func(done, total int)
	// Note reports a line worth logging (e.g. whether the SVD cache was used).
	Note func(string)
	// Step follows every optimizer step's submission (no GPU read-back).
	Step func(step, total int, epoch float64)
	// Log follows every logged step, evaluation and checkpoint included.
	Log        func(Record)
	Checkpoint func(dir string)
	// SaveNow, when it returns true after a step, writes a checkpoint then
	// (the window's `s`).
	SaveNow func() bool
	// Pause is called after every step and blocks while the user holds the
	// run paused (the window's `p`); it returns when resumed or when ctx ends.
	Pause func(ctx context.Context)
}

// Result sums up a finished run.
type Result struct {
	Steps      int
	FinalLoss  float64
	Eval       *evaluate.LossResult
	ExactMatch *evaluate.Summary
	Wall       time.Duration
	Tokens     int
	TokensPerS float64
	FLOPsRatio float64 // analytic, over the whole run
	AdapterDir string
	// StepAnalytic and StepMeasured are the sparse/dense FLOP ratio of one
	// step on the run's last micro-batch: counted analytically, and from
	// the dispatches a sparse and a dense pass actually recorded (0 for
	// dense runs; with checkpointing the recorded passes include the
	// recomputed forwards, which the analytic count leaves out).
	StepAnalytic, StepMeasured float64
	LastRecord                 Record
	Interrupted                bool
	LastCheckpnt               string
}

// Run trains cfg on dev. It returns ErrInterrupted (with the result so far)
// when ctx is cancelled, after finishing the current step and writing a
// checkpoint.
func Run(ctx context.Context, dev *gpu.Device, cfg Config, hooks Hooks) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r, err := newRun(ctx, dev, cfg, hooks)
	if err != nil {
		return nil, err
	}
	defer r.release()
	return r.loop(ctx)
}

// run is one training run's state.
type run struct {
	cfg   Config
	hooks Hooks
	dev   *gpu.Device
	// t holds the model, parameters, optimizer, workspace, schedule and
	// selector (train.New builds them).
	t *Trainer
	// configJSON is the config the model came from (written with full
	// checkpoints), read from configPath.
	configJSON []byte
	configPath string
	tok        *tokenizer.Tokenizer
	// save writes the trained parameters into a directory.
	save     func(dir string) error
	loader   *data.Loader
	evalData *data.Dataset
	eval     *evaluate.Evaluator
	// session generates for exact-match evaluation (nil with the loss
	// metric).
	session  *infer.Session
	schedule optim.Schedule
	// sparsity is the run's table (nil: dense).
	sparsity *predictor.SparsityConfig
	cleanup  []func()
	metrics  *metricsLog
	plan     Plan
	fprint   string
	// reducer joins the steps of a data-parallel run (nil alone).
	reducer *hostReducer
	// tokens counts the real tokens trained on, startTokens those before a
	// resume.
	tokens, startTokens int
	// lastRecord is the metrics log's last record kept on resume.
	lastRecord Record
}

func (r *run) release() {
	for i := len(r.cleanup) - 1; i >= 0; i-- {
		r.cleanup[i]()
	}
}

func newRun(ctx context.Context, dev *gpu.Device, cfg Config, hooks Hooks) (_ *run, err error) {
	r := &run{cfg: cfg, hooks: hooks, dev: dev}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if r.lead() {
		// In a data-parallel run, rank 0's: the others write nothing.
		out, err := claimRunDir(cfg)
		if err != nil {
			return nil, err
		}
		r.cleanup = append(r.cleanup, out.release)
	}
	r.plan.Adapter, r.plan.ModelDir = dev.Info, cfg.Model
	if cfg.InitConfig != "" {
		r.plan.ModelDir = cfg.InitConfig + " (random weights)"
	}
	if r.configJSON, r.configPath, err = cfg.sourceConfig(); err != nil {
		return nil, err
	}
	mcfg, err := model.ParseConfig(r.configJSON, r.configPath)
	if err != nil {
		return nil, err
	}
	if err := r.loadData(ctx, mcfg); err != nil {
		return nil, err
	}
	if err := r.planMemory(mcfg); err != nil {
		return nil, err
	}
	resumeDir, st, err := r.resumePoint()
	if err != nil {
		return nil, err
	}
	if err := r.resolveSparsity(mcfg); err != nil {
		return nil, err
	}
	inputs, err := r.inputsFingerprint()
	if err != nil {
		return nil, err
	}
	r.fprint = r.fingerprint(r.plan.Seq, r.plan.TotalSteps, r.schedule.WarmupSteps) + " " + inputs
	// The settings and the data are checked before the model loads, the
	// model once it has.
	if err := checkResume(resumeDir, st, r.fprint, fpModel, fpModelContent); err != nil {
		return nil, err
	}
	s := r.settings(mcfg, resumeDir)
	s.Loaded = func(t *Trainer) error {
		r.t = t
		modelFP, err := r.modelFingerprint(ctx, t.Model)
		if err != nil {
			return err
		}
		if modelFP != "" {
			r.fprint += " " + modelFP
		}
		if err := checkResume(resumeDir, st, r.fprint); err != nil {
			return err
		}
		if err := r.setUpParallel(st.Step); err != nil {
			return err
		}
		if err := r.prepare(t, resumeDir, st); err != nil {
			return err
		}
		if hooks.Start != nil {
			hooks.Start(r.plan)
		}
		return nil
	}
	t, err := New(ctx, dev, s)
	if err != nil {
		return nil, err
	}
	// New released the trainer if it failed; now the run does, last.
	r.cleanup = append([]func(){t.Release}, r.cleanup...)
	if est := t.Estimator; est != nil && hooks.Note != nil {
		switch {
		case est.FromCache():
			hooks.Note(fmt.Sprintf("SVD factors (rank %d): read from the cache %s (keyed by %s)", est.Rank(), est.CachePath(), est.CacheKeyedBy()))
		case est.Cached():
			hooks.Note(fmt.Sprintf("SVD factors (rank %d): computed, cached in %s (keyed by %s)", est.Rank(), est.CachePath(), est.CacheKeyedBy()))
		default:
			hooks.Note(fmt.Sprintf("SVD factors (rank %d): computed, not cached (writing %s failed: see the warning above)", est.Rank(), est.CachePath()))
		}
	}
	return r, nil
}

// settings are what train.New builds for the run: the model from --model (a
// full-training checkpoint when resuming one, random weights with
// --init-config), the adapters (a checkpoint's, --adapter-init's or new
// ones), AdamW with the run's decay and clipping, and the sparsity table.
func (r *run) settings(mcfg *model.Config, resumeDir string) Settings {
	cfg := r.cfg
	s := Settings{
		Model:     ModelSource{Dir: cfg.Model, DType: gpu.F32},
		Params:    ParamSource{Full: cfg.Full, AdapterDir: cfg.AdapterInit, Seed: cfg.Seed},
		AdamW:     optim.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: cfg.WeightDecay, MaxGradNorm: cfg.MaxGradNorm},
		Schedule:  r.schedule,
		Rows:      cfg.BatchSize,
		Seq:       r.plan.Seq,
		Workspace: model.WorkspaceOptions{GradCheckpoint: cfg.GradCheckpoint, CheckpointEvery: cfg.CheckpointEvery},
		Sparsity:  r.sparsity,
		Estimate:  predictor.EstimateOptions{CacheDir: cfg.SVDCacheDir, VerifyContent: cfg.VerifySVDCache, Progress: r.hooks.SVD},
	}
	if cfg.BF16 {
		s.Model.DType = gpu.BF16
	}
	if cfg.Quantize != 0 {
		s.Model.Quantize = &model.Quantization{Bits: cfg.Quantize, GroupSize: cfg.GroupSize}
	}
	switch {
	case cfg.Full && resumeDir != "":
		s.Model.Dir = resumeDir
	case cfg.InitConfig != "":
		// As transformers initialises a model.
		s.Model = ModelSource{Random: mcfg, MaxSeq: mcfg.MaxPositionEmbeddings, InitRange: initializerRange(r.configJSON),
			Seed: cfg.Seed, DType: gpu.F32}
	}
	if !cfg.Full {
		if resumeDir != "" {
			s.Params.AdapterDir = resumeDir
		}
		if s.Params.AdapterDir == "" {
			targets, _ := lora.ParseTargets(cfg.Targets)
			s.Params.LoRA = lora.Config{Rank: cfg.Rank, Alpha: cfg.Alpha, Targets: targets, BaseModel: cfg.Model}
		}
	}
	return s
}

// prepare completes the run around its freshly built trainer, before the SVD
// estimator runs: the plan, how to save, the optimizer's moments and the data
// position when resuming, evaluation, and the run directory's configuration
// and metrics log.
func (r *run) prepare(t *Trainer, resumeDir string, st trainerState) error {
	cfg := r.cfg
	m := t.Model
	r.plan.Warnings = t.Warnings
	if a := t.Adapters; a != nil {
		if w := rankWarning(a.Config.Rank, a.Config.Targets, func(p model.Projection) (int, int) {
			return m.Layers[0].Proj[p].In, m.Layers[0].Proj[p].Out
		}); w != "" {
			r.plan.Warnings = append(r.plan.Warnings, w)
		}
	}
	r.plan.Config = m.Config
	r.plan.Total = m.Config.ParameterCount()
	for _, p := range t.Opt.Params() {
		r.plan.Trainable += int64(p.Value.Len())
	}
	if t.Adapters != nil {
		r.save = t.Adapters.Save
	} else {
		r.save = func(dir string) error {
			if err := m.Save(context.Background(), dir, r.configJSON, safetensors.F32); err != nil {
				return err
			}
			_, err := model.CopyCompanions(cfg.tokenizerDir(), dir)
			return err
		}
	}
	seq := r.plan.Seq
	var err error
	switch {
	case r.evalData != nil && cfg.EvalMetric == "exact-match":
		if r.session, err = infer.NewSession(m, r.tok, cfg.tokenizerDir(), seq+cfg.EvalMaxNewTokens); err != nil {
			return err
		}
		r.cleanup = append(r.cleanup, r.session.Release)
	case r.evalData != nil:
		if r.eval, err = evaluate.NewEvaluator(m, cfg.BatchSize, seq); err != nil {
			return err
		}
		r.cleanup = append(r.cleanup, r.eval.Release)
	}
	if resumeDir != "" {
		if err := loadMoments(resumeDir, t.Opt, st.Step); err != nil {
			return err
		}
		if err := r.loader.Seek(st.Cursor); err != nil {
			return fmt.Errorf("%s: %w", resumeDir, err)
		}
		r.plan.StartStep, r.plan.ResumedFrom, r.tokens, r.startTokens = st.Step, resumeDir, st.Tokens, st.Tokens
	}
	if !r.lead() {
		return nil
	}
	if cfg.Overwrite {
		if err := clearResults(cfg.Out); err != nil {
			return err
		}
	}
	resolved, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(cfg.Out, ConfigFileName), resolved); err != nil {
		return err
	}
	keep := -1
	if resumeDir != "" {
		keep = st.Step
	}
	if r.metrics, r.lastRecord, err = openMetrics(filepath.Join(cfg.Out, MetricsFileName), keep); err != nil {
		return err
	}
	r.cleanup = append(r.cleanup, func() { r.metrics.close() })
	return nil
}

// sourceConfig reads the config.json the run starts from: --init-config, or
// the model directory's.
func (c Config) sourceConfig() ([]byte, string, error) {
	flag, path := "--init-config", c.InitConfig
	if path == "" {
		flag, path = "--model", filepath.Join(c.Model, model.ConfigFileName)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, path, fmt.Errorf("%s: %w (want a Hugging Face model directory with config.json)", flag, err)
	}
	return raw, path, nil
}

// tokenizerDir is where the tokenizer comes from: --tokenizer, else --model.
func (c Config) tokenizerDir() string {
	if c.Tokenizer != "" {
		return c.Tokenizer
	}
	return c.Model
}

// loadData reads the tokenizer (every format but pre-tokenized ids needs
// it), the training and evaluation data, and sizes the run from them.
func (r *run) loadData(ctx context.Context, mcfg *model.Config) error {
	cfg := r.cfg
	var tok data.Tokenizer
	dir := cfg.tokenizerDir()
	if _, statErr := os.Stat(filepath.Join(dir, "tokenizer.json")); dir != "" && statErr == nil {
		var err error
		if r.tok, err = tokenizer.Load(dir); err != nil {
			return err
		}
		tok = r.tok
	} else if cfg.EvalData != "" && cfg.EvalMetric == "exact-match" {
		return fmt.Errorf("--eval-metric exact-match: no tokenizer.json in %q to decode completions with (see --tokenizer)", dir)
	}
	dopts := data.Options{MaxSeqLen: cfg.MaxSeqLen, SkipBadLines: cfg.SkipBadLines, VocabSize: mcfg.VocabSize}
	train, err := data.LoadContext(ctx, cfg.Data, tok, dopts)
	if err != nil {
		return err
	}
	r.plan.TrainData = train
	seq := train.MaxLen
	if cfg.EvalData != "" {
		if r.evalData, err = data.LoadContext(ctx, cfg.EvalData, tok, dopts); err != nil {
			return err
		}
		r.plan.EvalData = r.evalData
		seq = max(seq, r.evalData.MaxLen)
	}
	if seq > mcfg.MaxPositionEmbeddings {
		return fmt.Errorf("%s: examples of %d tokens exceed the model's max_position_embeddings %d (lower --max-seq-len)", cfg.Data, seq, mcfg.MaxPositionEmbeddings)
	}
	r.plan.Seq = seq
	// With several processes, each micro-batch holds every process's
	// examples and each takes its share (SPEC.md section 12).
	if err := data.FeedsWorld(len(train.Examples), r.world(), cfg.BatchSize); err != nil {
		return fmt.Errorf("%s: %w", cfg.Data, err)
	}
	if r.loader, err = data.NewLoader(train, data.LoaderOptions{BatchSize: cfg.BatchSize * r.world(), GradAccum: cfg.GradAccum,
		Shuffle: !cfg.NoShuffle, Seed: cfg.Seed, Seq: seq}); err != nil {
		return err
	}
	r.plan.StepsPerEp = r.loader.StepsPerEpoch()
	total := cfg.MaxSteps
	if total == 0 {
		total = cfg.Epochs * r.plan.StepsPerEp
	}
	r.plan.TotalSteps = total
	warmup := cfg.WarmupSteps
	if cfg.WarmupRatio > 0 {
		// transformers: ceil(ratio * total steps).
		warmup = int(math.Ceil(cfg.WarmupRatio * float64(total)))
	}
	kind, _ := optim.ParseScheduleKind(cfg.Schedule)
	r.schedule = optim.Schedule{Kind: kind, WarmupSteps: warmup, TotalSteps: total, BaseRate: cfg.LR}
	return nil
}

// initializerRange is config.json's initializer_range (transformers'
// default 0.02).
func initializerRange(configJSON []byte) float64 {
	var c struct {
		Range *float64 `json:"initializer_range"`
	}
	if json.Unmarshal(configJSON, &c) == nil && c.Range != nil {
		return *c.Range
	}
	return 0.02
}

// resumePoint finds the newest complete checkpoint when --resume is set.
func (r *run) resumePoint() (string, trainerState, error) {
	if !r.cfg.Resume {
		return "", trainerState{}, nil // claimRunDir refused earlier results
	}
	steps, err := checkpoints(r.cfg.Out)
	if err != nil {
		return "", trainerState{}, err
	}
	if len(steps) == 0 {
		return "", trainerState{}, fmt.Errorf("--resume: no complete checkpoint in %s", r.cfg.Out)
	}
	dir := filepath.Join(r.cfg.Out, fmt.Sprintf("%s%d", checkpointPrefix, steps[len(steps)-1]))
	st, err := readState(dir)
	return dir, st, err
}

// fingerprint names the settings that decide the run's result, so a resume
// with different ones is refused.
func (r *run) fingerprint(seq, total, warmup int) string {
	c := r.cfg
	fp := fmt.Sprintf("full=%t data=%s examples=%d seq=%d batch=%d accum=%d steps=%d lr=%g schedule=%s warmup=%d wd=%g clip=%g shuffle=%t seed=%d sparsity=%s bf16=%t",
		c.Full, filepath.Base(c.Data), len(r.plan.TrainData.Examples), seq, c.BatchSize, c.GradAccum, total, c.LR, c.Schedule, warmup,
		c.WeightDecay, c.MaxGradNorm, !c.NoShuffle, c.Seed, c.Sparsity, c.BF16)
	if r.world() > 1 {
		fp += fmt.Sprintf(" processes=%d", r.world())
	}
	return fp
}

// resolveSparsity picks the run's sparsity table (nil: dense) for the
// model's config.
func (r *run) resolveSparsity(mcfg *model.Config) error {
	if r.cfg.Full {
		r.plan.Sparsity, r.plan.SparseFrom = "dense (full-parameter training)", r.plan.TotalSteps
		return nil
	}
	table, note, err := ResolveSparsity(r.cfg.Sparsity, mcfg)
	if err != nil {
		return err
	}
	r.plan.Sparsity = note
	r.plan.SparseFrom = r.plan.TotalSteps
	if table != nil {
		r.sparsity = table
		r.plan.SparseFrom = min(table.StartStepFor(r.plan.TotalSteps), r.plan.TotalSteps)
	}
	return nil
}

// stepFLOPs is the analytic FLOP count of one optimizer step's micro-batches,
// dense and as run.
func (r *run) stepFLOPs(micro []data.Batch, sparse bool) (dense, actual float64, err error) {
	if r.t.Adapters == nil {
		// Full-parameter training runs dense: the ratio is 1.
		return 1, 1, nil
	}
	for _, b := range micro {
		f, err := r.batchFLOPs(b, sparse)
		if err != nil {
			return 0, 0, err
		}
		dense += f.Dense
		actual += f.Sparse
	}
	return dense, actual, nil
}

// batchFLOPs is the analytic FLOP report of one micro-batch, sparse or dense.
func (r *run) batchFLOPs(b data.Batch, sparse bool) (predictor.FLOPReport, error) {
	shape, err := predictor.BatchShape(model.Batch(b), r.t.Model.Config.VocabSize)
	if err != nil {
		return predictor.FLOPReport{}, err
	}
	table := r.sparsity
	if !sparse {
		table = nil
	}
	lc := r.t.Adapters.Config
	return predictor.StepFLOPs(r.t.Model.Config, shape, predictor.LoRATargets{Rank: lc.Rank, Targets: lc.Targets}, table)
}

func (r *run) loop(ctx context.Context) (*Result, error) {
	total := r.plan.TotalSteps
	res := &Result{AdapterDir: r.cfg.Out}
	start := time.Now()
	intervalStart, intervalTokens := start, 0
	var denseFLOPs, runFLOPs float64
	var epoch float64
	last := r.lastRecord // a resumed run that has no step left reports its last
	var lastMicro []data.Batch
	step := r.plan.StartStep
	for step < total {
		micro, ep, err := r.loader.Next()
		if err != nil {
			return nil, err
		}
		if micro, err = r.shard(micro); err != nil {
			return nil, err
		}
		epoch, lastMicro = ep, micro
		sel := r.t.SelectorAt(step)
		sparse := sel != nil
		batches := make([]model.Batch, len(micro))
		stepTokens := 0
		for i, b := range micro {
			batches[i] = model.Batch(b)
			for _, m := range b.Mask {
				stepTokens += int(m)
			}
		}
		lr := r.t.LR()
		if err := r.t.Step(batches, sel); err != nil {
			return nil, fmt.Errorf("step %d: %w", step+1, err)
		}
		d, a, err := r.stepFLOPs(micro, sparse)
		if err != nil {
			return nil, err
		}
		step++
		if r.hooks.Step != nil {
			r.hooks.Step(step, total, epoch)
		}
		if r.hooks.Pause != nil {
			r.hooks.Pause(ctx)
		}
		periodicSave := r.cfg.SaveEvery > 0 && step%r.cfg.SaveEvery == 0
		interrupted := ctx.Err() != nil
		agreed, err := r.agree(stepAgreement{stop: interrupted,
			save:   !periodicSave && !interrupted && r.hooks.SaveNow != nil && r.hooks.SaveNow(),
			tokens: stepTokens, denseFLOPs: d, actual: a})
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", step, err)
		}
		interrupted, d, a, stepTokens = agreed.stop, agreed.denseFLOPs, agreed.actual, agreed.tokens
		denseFLOPs += d
		runFLOPs += a
		r.tokens += stepTokens
		intervalTokens += stepTokens
		evalNow := r.evalData != nil && ((r.cfg.EvalEvery > 0 && step%r.cfg.EvalEvery == 0) || step == total)
		saveNow := periodicSave || interrupted || agreed.save
		if step%r.cfg.LogEvery != 0 && step != total && !evalNow && !saveNow {
			continue
		}
		// Log: the only read-back, which also checks the step for NaN before a
		// checkpoint can keep it.
		readCtx := context.WithoutCancel(ctx)
		stats, err := r.t.ReadStats(readCtx)
		if err != nil {
			if errors.Is(err, ErrNonFinite) {
				return nil, fmt.Errorf("step %d: %w; %s", step, err, checkpointsLeft(r.cfg.Out))
			}
			return nil, fmt.Errorf("step %d: %w", step, err)
		}
		if stats.GradNorm == 0 && r.hooks.Note != nil {
			r.hooks.Note(fmt.Sprintf("warning: step %d: the gradient norm is 0 (loss %.4f): the model no longer learns; is the learning rate too high?", step, stats.Loss))
		}
		now := time.Now()
		elapsed := now.Sub(intervalStart)
		rec := Record{Step: step, Epoch: epoch, Loss: stats.Loss, LR: lr, GradNorm: stats.GradNorm, Tokens: r.tokens,
			StepTokens: intervalTokens, TokensPerS: float64(intervalTokens) / elapsed.Seconds(), MSPerStep: float64(elapsed.Milliseconds()) / float64(stats.Steps),
			PeakBytes:  r.dev.PeakBytes(),
			FLOPsRatio: a / d, Sparse: sparse}
		rec.KeptMLP, rec.KeptAttn = keptFractions(r.sparsity, r.t.Model.Config, sparse)
		r.logExchange(&rec)
		if evalNow {
			if err := r.evaluate(readCtx, &rec, res); err != nil {
				return nil, fmt.Errorf("evaluation at step %d: %w", step, err)
			}
		}
		if err := r.metrics.write(rec); err != nil {
			return nil, err
		}
		if r.hooks.Log != nil {
			r.hooks.Log(rec)
		}
		last = rec
		if saveNow && r.lead() {
			dir, err := r.checkpoint(readCtx, step, epoch)
			if err != nil {
				return nil, err
			}
			res.LastCheckpnt = dir
		}
		intervalStart, intervalTokens = time.Now(), 0
		if interrupted {
			res.Interrupted = true
			break
		}
	}
	res.Steps, res.Wall, res.Tokens, res.LastRecord, res.FinalLoss = step, time.Since(start), r.tokens, last, last.Loss
	if res.Wall > 0 {
		res.TokensPerS = float64(r.tokens-r.startTokens) / res.Wall.Seconds()
	}
	if denseFLOPs > 0 {
		res.FLOPsRatio = runFLOPs / denseFLOPs
	}
	if res.Interrupted {
		return res, ErrInterrupted
	}
	if !r.lead() {
		return res, nil
	}
	if r.t.Selector != nil && len(lastMicro) > 0 {
		if err := r.measureStepFLOPs(ctx, lastMicro[0], res); err != nil {
			return nil, fmt.Errorf("counting the work of a step: %w", err)
		}
	}
	if err := r.save(r.cfg.Out); err != nil {
		return nil, fmt.Errorf("saving the trained parameters: %w", err)
	}
	return res, nil
}

// measureStepFLOPs records one dense and one sparse forward and backward of
// b after training and compares the FLOPs their dispatches issued with the
// analytic count. It changes no parameter (gradients only).
func (r *run) measureStepFLOPs(ctx context.Context, b data.Batch, res *Result) error {
	var counted [2]float64
	for i, sel := range []model.ChannelSelector{nil, r.t.Selector} {
		c, err := CountStep(ctx, r.t.Model, r.t.WS, model.Batch(b), sel)
		if err != nil {
			return err
		}
		counted[i] = c.Total
	}
	f, err := r.batchFLOPs(b, true)
	if err != nil {
		return err
	}
	// The selection kernels are no GEMMs: the recorded side takes their
	// analytic share, as bench step does.
	for _, l := range f.Layers {
		counted[1] += l.SparseParts.PredictorKernels
	}
	if f.Dense > 0 && counted[0] > 0 {
		res.StepAnalytic, res.StepMeasured = f.Sparse/f.Dense, counted[1]/counted[0]
	}
	return nil
}

// evaluate measures the evaluation data with the run's metric into rec and
// res.
func (r *run) evaluate(ctx context.Context, rec *Record, res *Result) error {
	if r.session != nil {
		var sum evaluate.Summary
		var err error
		if r.cfg.Group != nil {
			sum, err = r.exactMatchShared(ctx)
		} else {
			sum, _, err = evaluate.ExactMatch(ctx, r.session, r.evalData, r.cfg.EvalMaxNewTokens, nil)
		}
		if err != nil {
			return err
		}
		rec.EvalAccuracy = &sum.Accuracy
		res.ExactMatch = &sum
		return nil
	}
	var ev evaluate.LossResult
	var err error
	if r.cfg.Group != nil {
		ev, err = r.evaluateLossShared(ctx)
	} else {
		ev, err = r.eval.Loss(ctx, r.evalData)
	}
	if err != nil {
		return err
	}
	rec.EvalLoss, rec.EvalPerplexity = &ev.Loss, &ev.Perplexity
	res.Eval = &ev
	return nil
}

func (r *run) checkpoint(ctx context.Context, step int, epoch float64) (string, error) {
	st := trainerState{Step: step, TotalSteps: r.plan.TotalSteps, Epoch: epoch, Cursor: r.loader.Cursor(),
		Tokens: r.tokens, Fingerprint: r.fprint}
	dir, err := saveCheckpoint(ctx, r.cfg.Out, st, r.save, r.t.Opt, r.cfg.Keep)
	if err != nil {
		return "", fmt.Errorf("checkpoint at step %d: %w", step, err)
	}
	if r.hooks.Checkpoint != nil {
		r.hooks.Checkpoint(dir)
	}
	return dir, nil
}
