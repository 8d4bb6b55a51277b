package train

import (
	"context"
	"errors"
	"fmt"

	"github.com/sparselora/sparselora/full"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
)

// Settings say what New builds. Every command that trains (train, bench
// step, conformance) describes its set-up here and lets New build it, so the
// set-up exists once.
type Settings struct {
	Model  ModelSource
	Params ParamSource
	AdamW  optim.AdamWConfig
	// Schedule gives every step's learning rate; its TotalSteps also decides
	// when the sparsity table's dense warm-up ends.
	Schedule optim.Schedule
	// Rows and Seq size the workspace: one micro-batch of Rows sequences of
	// Seq tokens.
	Rows, Seq int
	// Workspace chooses the workspace's layout (activation checkpointing).
	Workspace model.WorkspaceOptions
	// Sparsity is the SparseLoRA table (nil or without sparse layers: dense
	// training). New runs the SVD estimator and builds the selector when a
	// step of the schedule runs sparse.
	Sparsity *predictor.SparsityConfig
	// Estimate tunes the SVD estimator (cache folder, progress).
	Estimate predictor.EstimateOptions
	// Loaded, when set, is called once the model, parameters, optimizer and
	// workspace exist and before the SVD estimator runs (which can take
	// minutes), so that the caller can report its plan or refuse to go on;
	// its error ends New.
	Loaded func(*Trainer) error
}

// ModelSource is where the frozen (or, in full training, trained) weights
// come from: a directory, or random weights of a config.
type ModelSource struct {
	// Dir is a Hugging Face model directory (or a full-training checkpoint).
	Dir string
	// Random, when Dir is "", builds random weights of this config with room
	// for MaxSeq positions, drawn from Seed.
	Random *model.Config
	MaxSeq int
	// InitRange, when positive, redraws the random weights as transformers
	// initialises a model (normal with this standard deviation), for
	// training from scratch.
	InitRange float64
	Seed      uint64
	// DType stores the frozen weights (f32 or bf16).
	DType gpu.DType
	// Quantize, when set, quantizes Dir's float weights at load (MLX's
	// affine format), or the random ones; an MLX-quantized Dir loads
	// quantized without it.
	Quantize *model.Quantization
}

// ParamSource is what the steps train.
type ParamSource struct {
	// Full trains every weight (the model's weights must be f32) instead of
	// LoRA adapters.
	Full bool
	// AdapterDir loads PEFT adapters (a checkpoint, --adapter-init); when ""
	// New creates adapters of LoRA drawn from Seed.
	AdapterDir string
	LoRA       lora.Config
	Seed       uint64
}

// New loads or builds what s describes on dev: the model, the trainable
// parameters attached to it, their optimizer, the workspace of one
// micro-batch and, when a step runs sparse, the predictor's SVD factors and
// selector. The returned trainer owns them all.
func New(ctx context.Context, dev *gpu.Device, s Settings) (_ *Trainer, err error) {
	if s.Rows <= 0 || s.Seq <= 0 {
		return nil, fmt.Errorf("train: a workspace of %d x %d tokens", s.Rows, s.Seq)
	}
	var owned []func()
	defer func() {
		if err != nil {
			for i := len(owned) - 1; i >= 0; i-- {
				owned[i]()
			}
		}
	}()
	// Only full training trains the embedding table: otherwise it may stay in
	// host memory (with an untied head, model.LoadOptions.HostEmbedding).
	m, warnings, err := loadModel(dev, s.Model, !s.Params.Full)
	if err != nil {
		return nil, err
	}
	owned = append(owned, m.Release)
	if s.Params.Full {
		// The weights change: the SVD cache must never key on the files.
		m.Sources = nil
	}
	var (
		params   []optim.Param
		trained  Trainable
		adapters *lora.Set
		fullSet  *full.Set
	)
	if s.Params.Full {
		if fullSet, err = full.New(m); err != nil {
			return nil, err
		}
		owned = append(owned, fullSet.Release)
		trained, params = fullSet, fullSet.Params()
	} else {
		if s.Params.AdapterDir != "" {
			adapters, err = lora.Load(m, s.Params.AdapterDir)
		} else {
			adapters, err = lora.NewSet(m, s.Params.LoRA, s.Params.Seed)
		}
		if err != nil {
			return nil, err
		}
		owned = append(owned, adapters.Release)
		// Attach before the workspace: it sizes the adapters' scratch.
		adapters.Attach(m)
		trained, params = adapters, adapters.Params()
	}
	opt, err := optim.NewOptimizer(dev, params, s.AdamW)
	if err != nil {
		return nil, err
	}
	owned = append(owned, opt.Release)
	ws, err := m.NewWorkspaceWith(s.Rows, s.Seq, s.Workspace)
	if err != nil {
		return nil, err
	}
	owned = append(owned, ws.Release)
	t, err := assemble(m, trained, opt, ws, s.Schedule)
	if err != nil {
		return nil, err
	}
	// From here the trainer frees everything, its own parts included.
	t.owned, owned = owned, []func(){t.Release}
	t.Adapters, t.Full, t.Warnings = adapters, fullSet, warnings
	if s.Sparsity != nil && s.Sparsity.HasSparseLayers() {
		if s.Params.Full {
			return nil, errors.New("train: SparseLoRA sparsifies frozen weights; full-parameter training runs dense")
		}
		t.Sparsity = s.Sparsity
	}
	if s.Loaded != nil {
		if err := s.Loaded(t); err != nil {
			return nil, err
		}
	}
	if err := t.buildSelector(ctx, s.Estimate); err != nil {
		return nil, err
	}
	return t, nil
}

// loadModel loads the weights from src.Dir, or builds random ones, with the
// embedding table in host memory when hostEmbedding is set and the head is
// untied.
func loadModel(dev *gpu.Device, src ModelSource, hostEmbedding bool) (*model.Model, []string, error) {
	opts := model.LoadOptions{DType: src.DType, Quantize: src.Quantize, HostEmbedding: hostEmbedding}
	if src.Dir != "" {
		return model.LoadWithOptions(dev, src.Dir, opts)
	}
	if src.Random == nil {
		return nil, nil, errors.New("train: no model: want a directory or a config for random weights")
	}
	m, err := model.NewRandomWith(dev, src.Random, opts, src.MaxSeq, src.Seed)
	if err != nil {
		return nil, nil, err
	}
	if src.InitRange > 0 {
		if err := full.InitRandom(m, src.InitRange, src.Seed); err != nil {
			m.Release()
			return nil, nil, err
		}
	}
	return m, nil, nil
}

// buildSelector computes (or reads from the cache) the SVD factors of the
// sparse layers and builds the channel selector, unless no step of the
// schedule gets past the dense warm-up.
func (t *Trainer) buildSelector(ctx context.Context, opts predictor.EstimateOptions) error {
	table, total := t.Sparsity, t.Schedule.TotalSteps
	if table == nil || table.StartStepFor(total) >= total {
		return nil
	}
	rank := table.Rank
	if rank == 0 {
		rank = 8
	}
	est, err := predictor.Estimate(ctx, t.Model.Dev, t.Model, predictor.SparseTargets(table), rank, opts)
	if err != nil {
		return fmt.Errorf("SVD estimator: %w", err)
	}
	t.owned = append(t.owned, est.Release)
	t.Estimator = est
	sel, err := predictor.NewSelector(t.Model.Dev, t.Model.Config, table.Layers, predictor.EstimatorFactors(est),
		t.WS.Rows*t.WS.Seq, t.WS.Rows, predictor.SelectOptions{SparseScoredTokens: !table.SkipOutputTokens})
	if err != nil {
		return err
	}
	t.owned = append(t.owned, sel.Release)
	t.Selector = sel
	return nil
}
