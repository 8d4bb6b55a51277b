// Package evaluate measures a model on a data set: the loss over the scored
// tokens (the training loss's masking) and perplexity, and exact match of
// greedy completions against the examples' answers, with the answer
// extracted as the SparseLoRA paper's evaluations (LLM-Adapters) do. An
// Evaluator owns its workspace (so evaluating never disturbs a training
// workspace); the model and its adapters stay the caller's.
package evaluate

import (
	"context"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/model"
)

// LossResult is the loss of a model over a data set: the mean token
// cross-entropy over all scored tokens (the training loss's masking) and its
// perplexity.
type LossResult struct {
	Loss, Perplexity float64
	Targets          int
}

// Evaluator scores the loss of data sets in a workspace of its own, so
// evaluating during training leaves the training pass untouched. It runs
// dense (no SparseLoRA): evaluation measures the model, not the training
// speed-up.
type Evaluator struct {
	m    *model.Model
	ws   *model.Workspace
	rows int
}

// NewEvaluator allocates a workspace of rows x seq tokens on m (with the
// adapters attached now).
func NewEvaluator(m *model.Model, rows, seq int) (*Evaluator, error) {
	// Evaluation runs no backward: its layers share one set of activations
	// and two inputs, the same forward in a fraction of the memory.
	ws, err := m.NewWorkspaceWith(rows, seq, model.WorkspaceOptions{ForwardOnly: true})
	if err != nil {
		return nil, fmt.Errorf("evaluation workspace: %w", err)
	}
	return &Evaluator{m: m, ws: ws, rows: rows}, nil
}

// Release frees the evaluation workspace.
func (e *Evaluator) Release() { e.ws.Release() }

// Loss evaluates ds: each batch's mean loss is weighted by its target count.
func (e *Evaluator) Loss(ctx context.Context, ds *data.Dataset) (LossResult, error) {
	batches, err := data.EvalBatches(ds, e.rows, e.ws.Seq)
	if err != nil {
		return LossResult{}, err
	}
	rec := e.m.Dev.NewRecorder()
	defer rec.Release()
	var sum float64
	total := 0
	for i, b := range batches {
		if err := ctx.Err(); err != nil {
			return LossResult{}, err
		}
		n := data.TargetCount(b)
		if n == 0 {
			continue
		}
		if err := e.ws.Load(e.m, model.Batch(b)); err != nil {
			return LossResult{}, fmt.Errorf("%s: evaluation batch %d: %w", ds.Path, i, err)
		}
		if err := e.m.Forward(rec, e.ws, nil); err != nil {
			return LossResult{}, err
		}
		if err := rec.Submit(); err != nil {
			return LossResult{}, err
		}
		loss, err := e.ws.Loss.Download(ctx)
		if err != nil {
			return LossResult{}, err
		}
		sum += float64(loss[0]) * float64(n)
		total += n
	}
	if total == 0 {
		return LossResult{}, fmt.Errorf("%s: no scored token to evaluate", ds.Path)
	}
	mean := sum / float64(total)
	return LossResult{Loss: mean, Perplexity: math.Exp(mean), Targets: total}, nil
}
