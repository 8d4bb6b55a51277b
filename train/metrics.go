package train

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/sparselora/sparselora/internal/atomicfile"
)

// MetricsFileName is the run directory's log, one JSON Record a line.
const MetricsFileName = "metrics.jsonl"

// Record is one line of metrics.jsonl: a logged optimizer step (SPEC section
// 8), with the evaluation figures when it evaluated.
type Record struct {
	// Step is the 1-based count of optimizer updates done.
	Step  int     `json:"step"`
	Epoch float64 `json:"epoch"`
	// Loss is the mean step loss since the previous logged step.
	Loss float64 `json:"loss"`
	// LR is the rate the step's update used; GradNorm its gradient norm before
	// clipping.
	LR       float64 `json:"lr"`
	GradNorm float64 `json:"grad_norm"`
	// Tokens counts the real (unpadded) tokens trained on so far (a running
	// total); StepTokens those of the steps since the previous record.
	Tokens     int     `json:"tokens"`
	StepTokens int     `json:"step_tokens"`
	TokensPerS float64 `json:"tokens_per_s"`
	MSPerStep  float64 `json:"ms_per_step"`
	// FLOPsRatio is the analytic sparse/dense FLOP ratio of the step (1 when
	// it ran dense, e.g. in the warm-up).
	FLOPsRatio float64 `json:"flops_ratio"`
	Sparse     bool    `json:"sparse"`
	// PeakBytes is the most GPU memory the run's buffers held so far.
	PeakBytes int64 `json:"peak_bytes,omitempty"`
	// KeptMLP and KeptAttn are the per-layer fractions of FFN and attention
	// channels the step computed for context tokens (1 = dense).
	KeptMLP  []float64 `json:"kept_mlp,omitempty"`
	KeptAttn []float64 `json:"kept_attn,omitempty"`
	// Data-parallel runs only: the gradient bytes each process all-reduces
	// per step, and the milliseconds per step of the MPI all-reduce and of
	// the whole exchange (reading the gradients, summing, writing them
	// back), averaged since the previous logged step.
	AllReduceBytes int64   `json:"allreduce_bytes,omitempty"`
	AllReduceMS    float64 `json:"allreduce_ms,omitempty"`
	GradSyncMS     float64 `json:"grad_sync_ms,omitempty"`
	// Evaluation figures, on steps that evaluated.
	EvalLoss       *float64 `json:"eval_loss,omitempty"`
	EvalPerplexity *float64 `json:"eval_perplexity,omitempty"`
	EvalAccuracy   *float64 `json:"eval_accuracy,omitempty"`
}

// metricsLog appends records to metrics.jsonl, one write per line.
type metricsLog struct {
	path string
	f    *os.File
}

// openMetrics opens path for appending, first dropping the lines of steps
// after keepThrough (those of an interrupted run past its last checkpoint,
// which a resumed run logs again); keepThrough < 0 starts a new log. It
// returns the last record kept (zero when none).
func openMetrics(path string, keepThrough int) (*metricsLog, Record, error) {
	var last Record
	if keepThrough < 0 {
		if err := atomicfile.WriteFile(path, nil); err != nil {
			return nil, last, err
		}
	} else if raw, err := os.ReadFile(path); err == nil {
		var kept []byte
		kept, last = keptMetrics(raw, keepThrough)
		if err := atomicfile.WriteFile(path, kept); err != nil {
			return nil, last, err
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, last, err
	}
	return &metricsLog{path: path, f: f}, last, nil
}

// keptMetrics returns the lines of a metrics log that a run resumed after
// step keepThrough keeps, and the last of them as a Record: every line that
// parses as a record of a step up to keepThrough. A line that does not parse
// (torn by a crash or a full disk, or edited) is dropped alone; the records
// after it are still the run's.
func keptMetrics(raw []byte, keepThrough int) ([]byte, Record) {
	var kept []byte
	var last Record
	for line := range bytes.Lines(raw) {
		line = bytes.TrimRight(line, "\r\n")
		var r Record
		if json.Unmarshal(line, &r) != nil || r.Step <= 0 || r.Step > keepThrough {
			continue
		}
		kept = append(append(kept, line...), '\n')
		last = r
	}
	return kept, last
}

// write appends r; a nil log (a data-parallel process other than rank 0)
// writes nothing.
func (l *metricsLog) write(r Record) error {
	if l == nil {
		return nil
	}
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("%s: %w", l.path, err)
	}
	if _, err := l.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("%s: %w", l.path, err)
	}
	return nil
}

func (l *metricsLog) close() error { return l.f.Close() }
