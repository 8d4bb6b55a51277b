// Package train owns fine-tuning around the model: the one set-up that every
// command that trains uses (New builds the model, the LoRA adapters or full
// training's gradients, the optimizer, the workspace, the schedule and the
// SparseLoRA selector from Settings), the one optimizer step (zero gradients,
// each micro-batch's forward and backward into one accumulation, clipping and
// AdamW, one queue submission), the training loop with the Hugging Face
// Trainer's semantics (SPEC.md section 8), evaluation in its own workspace,
// the run directory (owned by one run, locked while it trains), checkpoints
// that resume bit for bit (fingerprinted, so that another base model, data or
// setting is refused), the metrics log, and the step
// benchmark with its count of the work a step records. It prints nothing: the
// loop reports through callbacks.
//
// Ownership: a Trainer from New owns everything New built and Release frees
// it. The selector reaches the model only as an argument: Step passes the one
// it is given (SelectorAt says which a step of the schedule uses) to every
// micro-batch's forward.
package train

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/full"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
)

// Trainable is what a step trains: LoRA adapters (*lora.Set) or every
// weight (*full.Set); the optimizer holds its parameters.
type Trainable interface {
	// ZeroGrad records zeroing the gradients, which start an accumulation.
	ZeroGrad(rec *gpu.Recorder) error
}

// Trainer holds everything an optimizer step touches: the model with its
// trainable parameters, the optimizer, the workspace of one micro-batch, the
// learning-rate schedule and, for SparseLoRA, the sparsity table with the
// predictor's selector. New builds them; the trainer owns what New built and
// Release frees it. The fields are for reading (evaluation workspaces,
// checkpoints, FLOP counts): replacing one does not rewire the others.
type Trainer struct {
	Model *model.Model
	// Adapters are the LoRA adapters, attached to Model (nil in full
	// training); Full holds every weight's gradient (nil with LoRA). Params is
	// whichever of the two the steps train.
	Adapters *lora.Set
	Full     *full.Set
	Params   Trainable
	Opt      *optim.Optimizer
	// WS holds the activations of one micro-batch; steps stage their
	// micro-batches into it one after another.
	WS       *model.Workspace
	Schedule optim.Schedule
	// Sparsity is the SparseLoRA table (nil: dense training). Selector is the
	// predictor that chooses the kept channels, built from Estimator's SVD
	// factors when a step of the schedule runs sparse (nil otherwise).
	Sparsity  *predictor.SparsityConfig
	Estimator *predictor.Estimator
	Selector  *predictor.Selector
	// Warnings are the model loader's (e.g. tensors it ignored).
	Warnings []string

	// Reducer, when set, joins the step with other data-parallel processes:
	// the loss divides by the target count of every process's micro-batches,
	// and the gradients are summed between backward and clipping (which
	// splits the step's one submission in two). nil trains alone.
	Reducer GradReducer

	rec *gpu.Recorder
	// lossSum accumulates on the GPU the loss of every step since the last
	// ReadStats, so the host reads it only when it logs.
	lossSum *gpu.Tensor
	// unread counts the steps whose losses lossSum holds.
	unread int
	// owned frees what New built, in reverse order.
	owned []func()
}

// assemble makes the trainer's own recorder and loss sum around parts the
// caller built: params (attached to m), its optimizer, and ws (sized for one
// micro-batch).
func assemble(m *model.Model, params Trainable, opt *optim.Optimizer, ws *model.Workspace, schedule optim.Schedule) (*Trainer, error) {
	if m == nil || params == nil || opt == nil || ws == nil {
		return nil, errors.New("train: a trainer needs a model, trainable parameters, an optimizer and a workspace")
	}
	sum, err := m.Dev.NewTensor(gpu.F32, "loss sum", 1)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	return &Trainer{Model: m, Params: params, Opt: opt, WS: ws, Schedule: schedule, rec: m.Dev.NewRecorder(), lossSum: sum}, nil
}

// Release frees the trainer's recorder and loss sum and everything New built
// (model, parameters, optimizer, workspace, estimator, selector).
func (t *Trainer) Release() {
	t.rec.Release()
	t.lossSum.Release()
	for i := len(t.owned) - 1; i >= 0; i-- {
		t.owned[i]()
	}
	t.owned = nil
}

// SelectorAt is the selector of step (counted from 0) of the schedule's
// total: the predictor from the sparsity table's start step on, nil (dense)
// before it and in dense training. Pass it to Step.
func (t *Trainer) SelectorAt(step int) model.ChannelSelector {
	if t.Selector == nil || t.Sparsity == nil {
		return nil
	}
	return t.Sparsity.SelectorAt(t.Selector, step, t.Schedule.TotalSteps)
}

// LR is the learning rate of the next step: the schedule's rate after the
// optimizer's step count.
func (t *Trainer) LR() float64 { return t.Schedule.Rate(t.Opt.Steps()) }

// Step records and submits one optimizer update at rate LR over the
// micro-batches: zero the gradients; for each micro-batch, copy its inputs,
// forward and backward with the loss divided by the step's total target count
// (so the accumulated gradients are those of the step's mean loss); clip and
// AdamW; add the step's loss to the running sum. sel makes the frozen
// projections run sparse (SparseLoRA, see SelectorAt); nil runs dense. Step
// does not wait for the GPU.
func (t *Trainer) Step(micro []model.Batch, sel model.ChannelSelector) error {
	if len(micro) == 0 {
		return errors.New("train: a step needs at least one micro-batch")
	}
	targets, err := t.WS.Stage(t.Model, micro)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if t.Reducer != nil {
		global, err := t.Reducer.SumTargets(targets)
		if err != nil {
			return fmt.Errorf("train: %w", err)
		}
		t.WS.SetStagedTargets(global)
	}
	if err := t.record(len(micro), sel, t.LR()); err != nil {
		// The recorder holds a partial step that must never be submitted.
		// (With the embedding table in host memory, UseStaged submitted the
		// micro-batches before the failing one: their gradients are zeroed
		// by the next step, but their losses are in the running sum.)
		t.rec.Release()
		t.rec = t.Model.Dev.NewRecorder()
		return fmt.Errorf("train: %w", err)
	}
	if err := t.rec.Submit(); err != nil {
		return fmt.Errorf("train: submitting the step: %w", err)
	}
	t.unread++
	return nil
}

// record records the step in two phases: accumulate the gradients of every
// micro-batch, then update. Between them the gradients of the whole step are
// complete and nothing has read them yet: a Reducer sums them across
// processes there, which splits the step's one submission in two.
func (t *Trainer) record(micro int, sel model.ChannelSelector, lr float64) error {
	if err := t.accumulate(micro, sel); err != nil {
		return err
	}
	if t.Reducer != nil {
		if err := t.rec.Submit(); err != nil {
			return fmt.Errorf("submitting the step's passes: %w", err)
		}
		if err := t.Reducer.SumGrads(t.Opt.Params()); err != nil {
			return err
		}
	}
	return t.Opt.Step(t.rec, lr)
}

// accumulate records zeroing the gradients and each staged micro-batch's
// forward (adding its loss to the running sum) and backward.
func (t *Trainer) accumulate(micro int, sel model.ChannelSelector) error {
	rec, ws := t.rec, t.WS
	if err := t.Params.ZeroGrad(rec); err != nil {
		return err
	}
	for i := range micro {
		if err := ws.UseStaged(rec, i); err != nil {
			return err
		}
		if err := t.Model.Forward(rec, ws, sel); err != nil {
			return fmt.Errorf("micro-batch %d forward: %w", i, err)
		}
		if err := gpu.Axpby(rec, t.lossSum, ws.Loss, 1, 1); err != nil {
			return fmt.Errorf("micro-batch %d loss: %w", i, err)
		}
		if err := t.Model.Backward(rec, ws); err != nil {
			return fmt.Errorf("micro-batch %d backward: %w", i, err)
		}
	}
	return nil
}

// Stats are the figures read back from the GPU at a logging step.
type Stats struct {
	// Loss is the mean of the step losses since the previous read.
	Loss float64
	// GradNorm is the latest step's global gradient norm before clipping.
	GradNorm float64
	// Steps is how many steps Loss averages.
	Steps int
}

// ErrNonFinite reports a NaN or infinite loss or gradient norm.
var ErrNonFinite = errors.New("non-finite loss or gradient norm")

// ReadStats waits for the submitted steps and reads their mean loss and the
// latest gradient norm, then restarts the loss sum. It returns the stats with
// an error wrapping ErrNonFinite when either is NaN or infinite.
func (t *Trainer) ReadStats(ctx context.Context) (Stats, error) {
	if t.unread == 0 {
		return Stats{}, errors.New("train: no step since the last read")
	}
	sum, err := t.lossSum.Download(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("train: reading the loss: %w", err)
	}
	norm, err := t.Opt.GradNorm().Download(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("train: reading the gradient norm: %w", err)
	}
	lossSum := float64(sum[0])
	if t.Reducer != nil {
		// Each process holds its share of the step losses (its targets'
		// losses over the global count): their sum is the step's loss.
		if lossSum, err = t.Reducer.SumLoss(lossSum); err != nil {
			return Stats{}, fmt.Errorf("train: %w", err)
		}
	}
	s := Stats{Loss: lossSum / float64(t.unread), GradNorm: float64(norm[0]), Steps: t.unread}
	if err := t.lossSum.Upload([]float32{0}); err != nil {
		return s, fmt.Errorf("train: %w", err)
	}
	t.unread = 0
	if !finite(s.Loss) || !finite(s.GradNorm) {
		return s, fmt.Errorf("loss %g, gradient norm %g: %w", s.Loss, s.GradNorm, ErrNonFinite)
	}
	return s, nil
}

// Pending reports how many submitted steps ReadStats has not read yet.
func (t *Trainer) Pending() int { return t.unread }

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
