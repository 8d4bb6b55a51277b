package train

import (
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// Config is a training run. Its YAML keys are the `sparselora train` flags,
// so a resolved config written into the run directory can be passed back
// with --config.
type Config struct {
	Model       string `yaml:"model"`
	Data        string `yaml:"data"`
	Out         string `yaml:"out"`
	AdapterInit string `yaml:"adapter-init,omitempty"`
	// Tokenizer is a directory with tokenizer.json when --model has none
	// (or with --init-config).
	Tokenizer string `yaml:"tokenizer,omitempty"`
	// Full trains every weight instead of LoRA adapters; InitConfig starts
	// it from random weights of that config.json instead of --model.
	Full       bool   `yaml:"full"`
	InitConfig string `yaml:"init-config,omitempty"`

	Rank    int     `yaml:"rank"`
	Alpha   float64 `yaml:"alpha"`
	Targets string  `yaml:"targets"`

	BatchSize int `yaml:"batch-size"`
	GradAccum int `yaml:"grad-accum"`
	Epochs    int `yaml:"epochs"`
	// MaxSteps, when positive, overrides Epochs.
	MaxSteps int `yaml:"max-steps"`

	LR          float64 `yaml:"lr"`
	Schedule    string  `yaml:"schedule"`
	WarmupSteps int     `yaml:"warmup-steps"`
	WarmupRatio float64 `yaml:"warmup-ratio"`
	WeightDecay float64 `yaml:"weight-decay"`
	MaxGradNorm float64 `yaml:"max-grad-norm"`

	NoShuffle    bool   `yaml:"no-shuffle"`
	Seed         uint64 `yaml:"seed"`
	MaxSeqLen    int    `yaml:"max-seq-len"`
	SkipBadLines bool   `yaml:"skip-bad-lines"`

	// Sparsity is auto, dense, a built-in table name or a YAML file.
	Sparsity    string `yaml:"sparsity"`
	SVDCacheDir string `yaml:"svd-cache,omitempty"`
	// VerifySVDCache checks a cached SVD's weight hash against the weights
	// (reads them all) instead of trusting the files' size, time and header.
	VerifySVDCache bool `yaml:"verify-svd-cache"`

	EvalData  string `yaml:"eval-data,omitempty"`
	EvalEvery int    `yaml:"eval-every"`
	// EvalMetric is loss or exact-match (greedy completions of up to
	// EvalMaxNewTokens tokens against the examples' answers).
	EvalMetric       string `yaml:"eval-metric"`
	EvalMaxNewTokens int    `yaml:"eval-max-new-tokens"`

	SaveEvery int  `yaml:"save-every"`
	Keep      int  `yaml:"keep"`
	Resume    bool `yaml:"resume"`
	// Overwrite lets a new run replace the results of an earlier one in Out.
	// It is what to do with the folder, not a setting of the run: the
	// resolved config leaves it out, so passing it back with --config and
	// --resume is not refused as contradictory.
	Overwrite bool `yaml:"-"`
	// Verify fingerprints the base model by its files' content too, not only
	// their size, modification time and header (see Fingerprint).
	Verify   bool `yaml:"verify,omitempty"`
	LogEvery int  `yaml:"log-every"`
	BF16     bool `yaml:"bf16"`
	// GradCheckpoint recomputes each layer's forward in backward instead of
	// keeping its activations (same results, less memory, more compute).
	GradCheckpoint bool `yaml:"grad-checkpoint"`
	// CheckpointEvery, with GradCheckpoint, keeps every N-th layer's input
	// only (0 or 1: every layer's) and replays the layers in between in
	// backward (model.WorkspaceOptions.CheckpointEvery).
	CheckpointEvery int `yaml:"checkpoint-every,omitempty"`
	// MemoryLimit is the GPU memory the run may use ("16GiB"; empty: what
	// the adapter reports, if anything): a run whose plan exceeds it is
	// refused before it allocates.
	MemoryLimit string `yaml:"memory-limit,omitempty"`
	// Quantize (4 or 8; 0 off) quantizes the frozen weights at load in
	// groups of GroupSize inputs (MLX's affine format).
	Quantize  int `yaml:"quantize"`
	GroupSize int `yaml:"group-size"`

	// Group, when set, is the data-parallel processes this one trains with
	// (mpirun; SPEC.md section 12): BatchSize is per process, rank 0 alone
	// writes Out. It is no setting of the run's result, so no YAML key.
	Group Collective `yaml:"-"`
}

// DefaultConfig is the flags' defaults: PEFT-style LoRA r16/alpha 32 on every
// projection, the HF Trainer's optimizer settings, SparseLoRA on auto.
func DefaultConfig() Config {
	return Config{Rank: 16, Alpha: 32, Targets: "q,k,v,o,gate,up,down", BatchSize: 4, GradAccum: 1, Epochs: 1,
		LR: 2e-4, Schedule: "linear", WeightDecay: 0, MaxGradNorm: 1, Seed: 42, MaxSeqLen: 2048,
		Sparsity: "auto", SaveEvery: 0, Keep: 2, LogEvery: 10, EvalMetric: "loss", EvalMaxNewTokens: 64, GroupSize: 64}
}

// Validate checks every field, naming the flag of the first bad one.
func (c *Config) Validate() error {
	bad := func(flag string, v any, want string) error {
		return fmt.Errorf("--%s %v: %s", flag, v, want)
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case c.Model == "" && c.InitConfig == "":
		return errors.New("--model: a model directory is required (or --full --init-config config.json)")
	case c.InitConfig != "" && !c.Full:
		return errors.New("--init-config: random initial weights are for full-parameter training (--full)")
	case c.Full && c.AdapterInit != "":
		return errors.New("--full and --adapter-init: full-parameter training has no adapter")
	case c.Full && c.Sparsity != "auto" && c.Sparsity != "dense":
		return fmt.Errorf("--full and --sparsity %s: SparseLoRA sparsifies frozen weights; full-parameter training runs dense", c.Sparsity)
	case c.Data == "":
		return errors.New("--data: a JSONL file is required")
	case c.Out == "":
		return errors.New("--out: a run directory is required")
	case !c.Full && c.AdapterInit == "" && (!finite(c.Alpha) || c.Alpha <= 0):
		return bad("alpha", c.Alpha, "want a finite, positive number")
	case c.MaxSteps < 0:
		return bad("max-steps", c.MaxSteps, "want 0 (use --epochs) or more")
	case c.MaxSteps == 0 && c.Epochs <= 0:
		return bad("epochs", c.Epochs, "want at least 1 (or --max-steps)")
	case !finite(c.LR) || c.LR < 0:
		return bad("lr", c.LR, "want a finite, non-negative rate")
	case c.WarmupSteps < 0:
		return bad("warmup-steps", c.WarmupSteps, "want 0 or more")
	case !finite(c.WarmupRatio) || c.WarmupRatio < 0 || c.WarmupRatio >= 1:
		return bad("warmup-ratio", c.WarmupRatio, "want 0 <= ratio < 1")
	case c.WarmupSteps > 0 && c.WarmupRatio > 0:
		return errors.New("--warmup-steps and --warmup-ratio: give one of them")
	case !finite(c.WeightDecay) || c.WeightDecay < 0:
		return bad("weight-decay", c.WeightDecay, "want a finite, non-negative decay")
	case !finite(c.MaxGradNorm) || c.MaxGradNorm < 0:
		return bad("max-grad-norm", c.MaxGradNorm, "want 0 (no clipping) or more")
	case c.MaxSeqLen < 2 || c.MaxSeqLen > 1<<20:
		return bad("max-seq-len", c.MaxSeqLen, "want 2..1048576")
	case c.EvalEvery < 0:
		return bad("eval-every", c.EvalEvery, "want 0 (at the end only) or more")
	case c.SaveEvery < 0:
		return bad("save-every", c.SaveEvery, "want 0 (at the end only) or more")
	case c.Keep < 1:
		return bad("keep", c.Keep, "want at least 1 checkpoint kept")
	case c.LogEvery < 1:
		return bad("log-every", c.LogEvery, "want at least 1")
	case c.EvalMetric != "loss" && c.EvalMetric != "exact-match":
		return bad("eval-metric", c.EvalMetric, "want loss or exact-match")
	case c.EvalMaxNewTokens < 1 || c.EvalMaxNewTokens > 1<<20:
		return bad("eval-max-new-tokens", c.EvalMaxNewTokens, "want 1..1048576")
	case c.Resume && c.Overwrite:
		return errors.New("--resume and --overwrite: give one of them (continue the run in --out, or replace it)")
	case c.Sparsity == "":
		return errors.New("--sparsity: want auto, dense, a table name or a YAML file")
	}
	if _, err := optim.ParseScheduleKind(c.Schedule); err != nil {
		return fmt.Errorf("--schedule: %w", err)
	}
	return c.ValidateMemory()
}

// ValidateMemory checks the fields the memory plan depends on (what `plan`
// takes besides the model), naming the flag of the first bad one.
func (c *Config) ValidateMemory() error {
	bad := func(flag string, v any, want string) error {
		return fmt.Errorf("--%s %v: %s", flag, v, want)
	}
	quant := model.Quantization{Bits: c.Quantize, GroupSize: c.GroupSize}
	switch {
	case c.Full && c.BF16:
		return errors.New("--full and --bf16: trained weights must be f32 (small updates vanish in bf16)")
	case c.Full && c.Quantize != 0:
		return errors.New("--full and --quantize: trained weights must be f32; quantization is for frozen weights")
	case c.Quantize != 0 && quant.Check() != nil:
		return bad("quantize", c.Quantize, fmt.Sprintf("with --group-size %d: %v", c.GroupSize, quant.Check()))
	case !c.Full && c.AdapterInit == "" && (c.Rank <= 0 || c.Rank > 4096):
		return bad("rank", c.Rank, "want 1..4096")
	case c.BatchSize <= 0 || c.BatchSize > 4096:
		return bad("batch-size", c.BatchSize, "want 1..4096")
	case c.GradAccum <= 0 || c.GradAccum > 1<<16:
		return bad("grad-accum", c.GradAccum, "want 1..65536")
	case c.CheckpointEvery < 0:
		return bad("checkpoint-every", c.CheckpointEvery, "want 1 or more layers per segment (0: 1)")
	case c.CheckpointEvery > 1 && !c.GradCheckpoint:
		return errors.New("--checkpoint-every: only with --grad-checkpoint (it sets which layer inputs checkpointing keeps)")
	}
	if _, err := ParseSize(c.MemoryLimit); err != nil {
		return fmt.Errorf("--memory-limit: %w", err)
	}
	if !c.Full && c.AdapterInit == "" {
		if _, err := lora.ParseTargets(c.Targets); err != nil {
			return err
		}
	}
	return nil
}
