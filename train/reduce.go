package train

import (
	"context"
	"fmt"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/optim"
)

// GradReducer joins a Trainer's step with the other processes of a
// data-parallel run (SPEC.md section 12). Every process calls the same
// methods in the same order.
type GradReducer interface {
	// SumTargets returns the step's loss-target count over all processes.
	SumTargets(local int) (int, error)
	// SumGrads replaces every gradient with its sum over all processes. The
	// gradients' step has been submitted, not waited for.
	SumGrads(params []optim.Param) error
	// SumLoss returns the sum of every process's loss share.
	SumLoss(local float64) (float64, error)
}

// Collective is the group of processes a run trains with (dist.Comm).
type Collective interface {
	Rank() int
	Size() int
	// SumFloat32 and SumFloat64 replace v with its element-wise sum over all
	// processes.
	SumFloat32(v []float32) error
	SumFloat64(v []float64) error
	// BroadcastBytes returns root's b on every process.
	BroadcastBytes(b []byte, root int) ([]byte, error)
}

// hostReducer sums on the host: it downloads the gradients into one
// buffer, all-reduces it and uploads the sums (LoRA gradients are
// megabytes; SPEC.md section 12).
type hostReducer struct {
	// ctx is never cancelled: every process finishes a step it started.
	ctx   context.Context
	dev   *gpu.Device
	group Collective
	buf   []float32
	// Totals since the last syncStats.
	steps         int
	bytes         int64
	reduce, whole time.Duration
}

// syncStats returns the per-step means of the exchanges since the last
// call and restarts them.
func (h *hostReducer) syncStats() (bytes int64, reduceMS, wholeMS float64) {
	if h.steps == 0 {
		return 0, 0, 0
	}
	n := float64(h.steps)
	bytes, reduceMS, wholeMS = h.bytes/int64(h.steps), float64(h.reduce.Microseconds())/1e3/n, float64(h.whole.Microseconds())/1e3/n
	h.steps, h.bytes, h.reduce, h.whole = 0, 0, 0, 0
	return bytes, reduceMS, wholeMS
}

func (h *hostReducer) SumTargets(local int) (int, error) {
	v := []float64{float64(local)}
	if err := h.group.SumFloat64(v); err != nil {
		return 0, fmt.Errorf("summing the loss-target count: %w", err)
	}
	if v[0] < 1 {
		return 0, fmt.Errorf("the step's micro-batches have no loss target on any of the %d processes", h.group.Size())
	}
	return int(v[0]), nil
}

func (h *hostReducer) SumLoss(local float64) (float64, error) {
	v := []float64{local}
	if err := h.group.SumFloat64(v); err != nil {
		return 0, fmt.Errorf("summing the loss: %w", err)
	}
	return v[0], nil
}

func (h *hostReducer) SumGrads(params []optim.Param) error {
	// The exchange's time starts once the step's passes are done.
	if err := h.dev.Sync(h.ctx); err != nil {
		return fmt.Errorf("waiting for the step's backward passes: %w", err)
	}
	start := time.Now()
	h.buf = h.buf[:0]
	for _, p := range params {
		v, err := p.Grad.Download(h.ctx)
		if err != nil {
			return fmt.Errorf("reading the gradient of %s: %w", p.Name, err)
		}
		h.buf = append(h.buf, v...)
	}
	reduceStart := time.Now()
	if err := h.group.SumFloat32(h.buf); err != nil {
		return fmt.Errorf("summing the gradients: %w", err)
	}
	h.reduce += time.Since(reduceStart)
	off := 0
	for _, p := range params {
		n := p.Grad.Len()
		if err := p.Grad.Upload(h.buf[off : off+n]); err != nil {
			return fmt.Errorf("writing the summed gradient of %s: %w", p.Name, err)
		}
		off += n
	}
	h.steps++
	h.bytes += int64(4 * len(h.buf))
	h.whole += time.Since(start)
	return nil
}
