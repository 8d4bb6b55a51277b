// Package train owns LoRA fine-tuning around the model: the one optimizer step
// that every command uses (zero gradients, each micro-batch's forward and
// backward into one accumulation, clipping and AdamW, one queue submission),
// the training loop with the Hugging Face Trainer's semantics (SPEC.md section
// 8), evaluation in its own workspace, checkpoints that resume bit for bit,
// and the metrics log. It prints nothing: the loop reports through callbacks.
package train

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// Trainable is what a step trains: LoRA adapters (*lora.Set) or every
// weight (*full.Set); the optimizer holds its parameters.
type Trainable interface {
	// ZeroGrad records zeroing the gradients, which start an accumulation.
	ZeroGrad(rec *gpu.Recorder) error
}

// Trainer runs optimizer steps of a model's trainable parameters in one
// workspace. It does not own the model, parameters, optimizer or workspace.
type Trainer struct {
	Model  *model.Model
	Params Trainable
	Opt    *optim.Optimizer
	WS     *model.Workspace

	rec *gpu.Recorder
	// lossSum accumulates on the GPU the loss of every step since the last
	// ReadStats, so the host reads it only when it logs.
	lossSum *gpu.Tensor
	// unread counts the steps whose losses lossSum holds.
	unread int
}

// NewTrainer prepares steps over params (attached to m) in ws (sized for one
// micro-batch).
func NewTrainer(m *model.Model, params Trainable, opt *optim.Optimizer, ws *model.Workspace) (*Trainer, error) {
	if m == nil || params == nil || opt == nil || ws == nil {
		return nil, errors.New("train: NewTrainer needs a model, trainable parameters, an optimizer and a workspace")
	}
	sum, err := m.Dev.NewTensor(gpu.F32, "loss sum", 1)
	if err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	return &Trainer{Model: m, Params: params, Opt: opt, WS: ws, rec: m.Dev.NewRecorder(), lossSum: sum}, nil
}

// Release frees what the trainer allocated (not the model, parameters,
// optimizer or workspace).
func (t *Trainer) Release() {
	t.rec.Release()
	t.lossSum.Release()
}

// Step records and submits one optimizer update with learning rate lr over the
// micro-batches: zero the gradients; for each micro-batch, copy its inputs,
// forward and backward with the loss divided by the step's total target count
// (so the accumulated gradients are those of the step's mean loss); clip and
// AdamW; add the step's loss to the running sum. sel makes the frozen
// projections run sparse (SparseLoRA); nil runs dense. Step does not wait for
// the GPU.
func (t *Trainer) Step(micro []model.Batch, lr float64, sel model.ChannelSelector) error {
	if len(micro) == 0 {
		return errors.New("train: a step needs at least one micro-batch")
	}
	if _, err := t.WS.Stage(t.Model, micro); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	t.WS.Selector = sel
	if err := t.record(len(micro), lr); err != nil {
		// The recorder holds a partial step that must never be submitted.
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

func (t *Trainer) record(micro int, lr float64) error {
	rec, ws := t.rec, t.WS
	if err := t.Params.ZeroGrad(rec); err != nil {
		return err
	}
	for i := range micro {
		if err := ws.UseStaged(rec, i); err != nil {
			return err
		}
		if err := t.Model.Forward(rec, ws); err != nil {
			return fmt.Errorf("micro-batch %d forward: %w", i, err)
		}
		if err := gpu.Axpby(rec, t.lossSum, ws.Loss, 1, 1); err != nil {
			return fmt.Errorf("micro-batch %d loss: %w", i, err)
		}
		if err := t.Model.Backward(rec, ws); err != nil {
			return fmt.Errorf("micro-batch %d backward: %w", i, err)
		}
	}
	return t.Opt.Step(rec, lr)
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
	s := Stats{Loss: float64(sum[0]) / float64(t.unread), GradNorm: float64(norm[0]), Steps: t.unread}
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
