package plot

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// Record is one line of a run's metrics.jsonl: one logged optimizer step, or
// an evaluation. Float fields that the line does not carry are NaN (JSON has
// no NaN, so NaN always means "absent"); HasTrain and HasEval say which kind
// of figures a record holds.
type Record struct {
	Step         int       // 1-based count of optimizer updates
	Epoch        float64   // fractional epoch
	Loss         float64   // training loss of the step
	LR           float64   // learning rate the update used
	GradNorm     float64   // gradient norm before clipping
	Tokens       int       // tokens trained on so far, a running total (0 when absent)
	TokensPerS   float64   // throughput of the step
	MSPerStep    float64   // wall time of the step
	FLOPsRatio   float64   // sparse/dense FLOP ratio of the step (1 = dense)
	Sparse       bool      // the step ran sparse (false in the dense warm-up)
	PeakBytes    int64     // most GPU memory held so far (0 when absent)
	KeptMLP      []float64 // per-layer kept fraction of MLP channels (1 = dense)
	KeptAttn     []float64 // per-layer kept fraction of attention channels
	EvalLoss     float64   // evaluation loss, where evaluation ran
	EvalAccuracy float64   // evaluation accuracy, where evaluation ran
}

// HasTrain reports whether the record carries a training loss.
func (r Record) HasTrain() bool { return !math.IsNaN(r.Loss) }

// HasEval reports whether the record carries an evaluation loss or accuracy.
func (r Record) HasEval() bool { return !math.IsNaN(r.EvalLoss) || !math.IsNaN(r.EvalAccuracy) }

// metricsLine is the JSON form; pointers tell absent fields from zeros.
// Unknown fields are ignored so that the trainer may log more.
type metricsLine struct {
	Step         *int      `json:"step"`
	Epoch        *float64  `json:"epoch"`
	Loss         *float64  `json:"loss"`
	LR           *float64  `json:"lr"`
	GradNorm     *float64  `json:"grad_norm"`
	Tokens       *int      `json:"tokens"`
	TokensPerS   *float64  `json:"tokens_per_s"`
	MSPerStep    *float64  `json:"ms_per_step"`
	FLOPsRatio   *float64  `json:"flops_ratio"`
	Sparse       *bool     `json:"sparse"`
	PeakBytes    int64     `json:"peak_bytes"`
	KeptMLP      []float64 `json:"kept_mlp"`
	KeptAttn     []float64 `json:"kept_attn"`
	EvalLoss     *float64  `json:"eval_loss"`
	EvalAccuracy *float64  `json:"eval_accuracy"`
}

func orNaN(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// ReadMetrics reads a metrics.jsonl file. Errors name the file and line.
func ReadMetrics(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMetrics(f, path)
}

// ParseMetrics reads metrics.jsonl lines from r; name is used in errors.
// Blank lines are skipped. Because the trainer appends to the file while a
// reader may be reading it, a final line without a newline that does not parse
// is taken as still being written and skipped; any other bad line is an error.
func ParseMetrics(r io.Reader, name string) ([]Record, error) {
	br := bufio.NewReader(r)
	var recs []Record
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return recs, fmt.Errorf("%s:%d: %w", name, lineNo, err)
		}
		complete := err == nil
		if len(bytes.TrimSpace(line)) > 0 {
			rec, perr := parseRecord(line)
			switch {
			case perr == nil:
				recs = append(recs, rec)
			case complete:
				return recs, fmt.Errorf("%s:%d: %w", name, lineNo, perr)
			}
		}
		if !complete {
			return recs, nil
		}
	}
}

func parseRecord(line []byte) (Record, error) {
	var m metricsLine
	if err := json.Unmarshal(line, &m); err != nil {
		return Record{}, err
	}
	if m.Step == nil {
		return Record{}, errors.New(`no "step" field`)
	}
	if *m.Step < 0 {
		return Record{}, fmt.Errorf("step %d is negative", *m.Step)
	}
	rec := Record{
		Step:         *m.Step,
		Epoch:        orNaN(m.Epoch),
		Loss:         orNaN(m.Loss),
		LR:           orNaN(m.LR),
		GradNorm:     orNaN(m.GradNorm),
		TokensPerS:   orNaN(m.TokensPerS),
		MSPerStep:    orNaN(m.MSPerStep),
		FLOPsRatio:   orNaN(m.FLOPsRatio),
		PeakBytes:    m.PeakBytes,
		KeptMLP:      m.KeptMLP,
		KeptAttn:     m.KeptAttn,
		EvalLoss:     orNaN(m.EvalLoss),
		EvalAccuracy: orNaN(m.EvalAccuracy),
	}
	if m.Tokens != nil {
		rec.Tokens = *m.Tokens
	}
	if m.Sparse != nil {
		rec.Sparse = *m.Sparse
	}
	for _, kept := range []struct {
		field  string
		values []float64
	}{{"kept_mlp", rec.KeptMLP}, {"kept_attn", rec.KeptAttn}} {
		for layer, f := range kept.values {
			if !(f >= 0 && f <= 1) {
				return Record{}, fmt.Errorf("%s[%d] = %g is outside [0, 1]", kept.field, layer, f)
			}
		}
	}
	return rec, nil
}

// SteadyThroughput is the mean ms/step and tokens/s of a run's logged
// intervals after the first (which compiles the kernels), counting for a
// sparse run only intervals that ran sparse throughout; zeros when there is
// none.
func SteadyThroughput(recs []Record, sparse bool) (msPerStep, tokensPerS float64) {
	var ms, tps float64
	n := 0
	for i := 1; i < len(recs); i++ {
		if sparse && !(recs[i].Sparse && recs[i-1].Sparse) {
			continue
		}
		ms += recs[i].MSPerStep
		tps += recs[i].TokensPerS
		n++
	}
	if n == 0 {
		return 0, 0
	}
	return ms / float64(n), tps / float64(n)
}
