package train

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
)

// BenchSettings are a step benchmark (`sparselora bench step`): random
// weights of a shape, new LoRA adapters, one synthetic batch, and the
// sparsity of a table's layers.
type BenchSettings struct {
	// Config is the shape, with the number of layers to build.
	Config *model.Config
	DType  gpu.DType
	LoRA   lora.Config
	// Sparsity is the table renumbered for the built layers (BenchSparsity).
	Sparsity *predictor.SparsityConfig
	Batch    model.Batch
	// Reps is the number of timed steps per variant (after a warm-up each).
	Reps int
	// FLOPs is the analytic count of one step of Batch, dense and sparse.
	FLOPs predictor.FLOPReport
	// SVD reports the estimator's progress (factors done of total).
	SVD func(done, total int)
	// GradCheckpoint recomputes each layer's forward in backward, keeping
	// every CheckpointEvery-th layer's input (0 or 1: every layer's).
	GradCheckpoint  bool
	CheckpointEvery int
	// TimingsOnly skips the count of the recorded work (BenchResult.Counted
	// stays zero): it replays each step dispatch by dispatch, which costs more
	// than the timed steps on a slow adapter.
	TimingsOnly bool
	// Quantize, when set, quantizes the random matrices (MLX's affine
	// format, scales in DType, as a checkpoint of DType quantized at load).
	Quantize *model.Quantization
}

// StepTiming is one variant's timed steps.
type StepTiming struct {
	Variant      string  `json:"variant"`
	Reps         int     `json:"reps"`
	MedianMS     float64 `json:"median_ms"`
	TokensPerSec float64 `json:"tokens_per_s"`
	FLOPs        float64 `json:"flops"`
	TFLOPS       float64 `json:"tflops"`
	// Speedup is the first variant's median over this one's (0 for the
	// first).
	Speedup float64 `json:"speedup,omitempty"`
	// PlannedPeakBytes is the memory plan's peak (BenchPlan);
	// MeasuredPeakBytes the most bytes the device's buffers held during the
	// variant's first step.
	PlannedPeakBytes  uint64 `json:"planned_peak_bytes"`
	MeasuredPeakBytes int64  `json:"measured_peak_bytes"`
}

// BenchResult is a step benchmark's outcome.
type BenchResult struct {
	// Setup is the time to build the model, adapters and SVD factors.
	Setup time.Duration
	// Timings are dense LoRA's, then SparseLoRA's.
	Timings []StepTiming
	// Counted are the FLOPs the dense and the sparse step recorded (none
	// with BenchSettings.TimingsOnly).
	Counted [2]RecordedFLOPs
}

// BenchStep times training steps of dense LoRA and of SparseLoRA on the same
// model and batch, alternating between the two so that a change in the
// machine's load hits both alike, then counts the work each records.
func BenchStep(ctx context.Context, dev *gpu.Device, s BenchSettings) (*BenchResult, error) {
	if s.Reps <= 0 {
		return nil, fmt.Errorf("train: a benchmark of %d repetitions", s.Reps)
	}
	start := time.Now()
	// Every step is sparse from the first (the benchmark measures a sparse
	// step, not a run with a dense warm-up).
	var sparsity *predictor.SparsityConfig
	if s.Sparsity != nil {
		c := *s.Sparsity
		c.StartStep = 0
		sparsity = &c
	}
	t, err := New(ctx, dev, Settings{
		Model:     ModelSource{Random: s.Config, MaxSeq: s.Batch.Seq, Seed: 1, DType: s.DType, Quantize: s.Quantize},
		Params:    ParamSource{LoRA: s.LoRA, Seed: 1},
		AdamW:     optim.DefaultAdamWConfig(),
		Schedule:  optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 1, BaseRate: 1e-4},
		Rows:      s.Batch.Rows,
		Seq:       s.Batch.Seq,
		Workspace: model.WorkspaceOptions{GradCheckpoint: s.GradCheckpoint, CheckpointEvery: s.CheckpointEvery},
		Sparsity:  sparsity,
		Estimate:  predictor.EstimateOptions{NoCache: true, Progress: s.SVD},
	})
	if err != nil {
		return nil, err
	}
	defer t.Release()
	res := &BenchResult{Setup: time.Since(start)}
	shape, err := predictor.BatchShape(s.Batch, s.Config.VocabSize)
	if err != nil {
		return nil, err
	}
	if err := t.WS.Load(t.Model, s.Batch); err != nil {
		return nil, err
	}
	if ws := t.WS; ws.Tokens.RealCount != shape.RealTokens || ws.Tokens.ScoredCount != shape.ScoredTokens {
		return nil, fmt.Errorf("train: the workspace counts %d real and %d scored tokens, the FLOP model %d and %d",
			ws.Tokens.RealCount, ws.Tokens.ScoredCount, shape.RealTokens, shape.ScoredTokens)
	}
	step := func(sel model.ChannelSelector) error {
		if err := t.Step([]model.Batch{s.Batch}, sel); err != nil {
			return err
		}
		return dev.Sync(ctx)
	}
	variants := []struct {
		name  string
		sel   model.ChannelSelector
		flops float64
	}{{"dense LoRA", nil, s.FLOPs.Dense}, {"SparseLoRA", t.SelectorAt(0), s.FLOPs.Sparse}}
	measured := make([]int64, len(variants))
	for i, v := range variants {
		dev.ResetPeakBytes()
		if err := step(v.sel); err != nil { // warm-up: pipelines compile here
			return nil, fmt.Errorf("%s: %w", v.name, err)
		}
		measured[i] = dev.PeakBytes()
	}
	planned := BenchPlan(s).PeakBytes
	times := make([][]time.Duration, len(variants))
	for range s.Reps {
		for i, v := range variants {
			start := time.Now()
			if err := step(v.sel); err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	for i, v := range variants {
		slices.Sort(times[i])
		med := times[i][len(times[i])/2].Seconds()
		r := StepTiming{Variant: v.name, Reps: s.Reps, MedianMS: med * 1e3, TokensPerSec: float64(shape.RealTokens) / med,
			FLOPs: v.flops, TFLOPS: v.flops / med / 1e12, PlannedPeakBytes: planned, MeasuredPeakBytes: measured[i]}
		if len(res.Timings) > 0 {
			r.Speedup = res.Timings[0].MedianMS / r.MedianMS
		}
		res.Timings = append(res.Timings, r)
	}
	if s.TimingsOnly {
		return res, nil
	}
	// Count the work one step really records: every GEMM's sizes with the
	// counts of its index lists read back, and the attention kernels' grids.
	for i, v := range variants {
		if res.Counted[i], err = CountStep(ctx, t.Model, t.WS, s.Batch, v.sel); err != nil {
			return nil, fmt.Errorf("counting the recorded work: %w", err)
		}
	}
	return res, nil
}

// FLOPRow is one part of a step (a layer, the LM head, or the whole step)
// with its analytic FLOPs and those of the dispatches a step recorded, dense
// and sparse.
type FLOPRow struct {
	Part                           string
	DenseAnalytic, DenseRecorded   float64
	SparseAnalytic, SparseRecorded float64
}

// CompareFLOPs sets the analytic count of a step beside the FLOPs the dense
// and the sparse step recorded (counted), per layer, for the LM head and for
// the step. The predictor's selection kernels are no GEMMs: the recorded side
// takes their analytic share.
func CompareFLOPs(flops predictor.FLOPReport, counted [2]RecordedFLOPs) []FLOPRow {
	var rows []FLOPRow
	step := FLOPRow{Part: "step"}
	for i, l := range flops.Layers {
		r := FLOPRow{Part: fmt.Sprintf("layer %d", i), DenseAnalytic: l.Dense, SparseAnalytic: l.Sparse,
			DenseRecorded:  counted[0].Layers[i] + l.DenseParts.PredictorKernels,
			SparseRecorded: counted[1].Layers[i] + l.SparseParts.PredictorKernels}
		rows = append(rows, r)
		step.DenseAnalytic += r.DenseAnalytic
		step.DenseRecorded += r.DenseRecorded
		step.SparseAnalytic += r.SparseAnalytic
		step.SparseRecorded += r.SparseRecorded
	}
	head := FLOPRow{Part: "lm_head", DenseAnalytic: flops.LMHead, DenseRecorded: counted[0].Other,
		SparseAnalytic: flops.LMHead, SparseRecorded: counted[1].Other}
	step.DenseAnalytic += head.DenseAnalytic
	step.DenseRecorded += head.DenseRecorded
	step.SparseAnalytic += head.SparseAnalytic
	step.SparseRecorded += head.SparseRecorded
	return append(rows, head, step)
}

// BenchSparsity maps n built layers onto table layers start.. and returns
// the table renumbered for the built model (mode, rank and flags kept) with
// start. A negative first picks start: 0 when the built layers cover the
// table, else the first layer whose FFN and attention are both sparse (the
// first sparse one when none is).
func BenchSparsity(table *predictor.SparsityConfig, first, n int) (*predictor.SparsityConfig, int) {
	start := first
	if start < 0 && len(table.Layers) > 0 && n > slices.Max(slices.Collect(maps.Keys(table.Layers))) {
		start = 0 // the built model holds the whole table
	}
	if start < 0 {
		start = 0
		var both []int
		for layer, s := range table.Layers {
			if s.MLP > 0 && s.Attention > 0 {
				both = append(both, layer)
			}
		}
		if len(both) == 0 {
			for layer, s := range table.Layers {
				if s.MLP > 0 || s.Attention > 0 {
					both = append(both, layer)
				}
			}
		}
		if len(both) > 0 {
			start = slices.Min(both)
		}
	}
	out := *table
	out.Layers = map[int]predictor.LayerSparsity{}
	for i := range n {
		if s, ok := table.Layers[start+i]; ok && (s.MLP > 0 || s.Attention > 0) {
			out.Layers[i] = s
		}
	}
	return &out, start
}

// BenchBatch is the synthetic batch of a step benchmark: rows of seq
// positions, the last padding of them padding, and the output tokens just
// before the padding labelled (their predecessors are the scored positions).
func BenchBatch(rows, seq, output, padding, vocab int) model.Batch {
	b := model.Batch{Rows: rows, Seq: seq}
	for i := range rows * seq {
		pos := i % seq
		real := pos < seq-padding
		b.InputIDs = append(b.InputIDs, int32((i*7919+13)%vocab))
		b.Mask = append(b.Mask, map[bool]int32{true: 1}[real])
		label := int32(model.IgnoreLabel)
		if real && pos >= seq-padding-output {
			label = b.InputIDs[i]
		}
		b.Labels = append(b.Labels, label)
	}
	return b
}

// BenchPlan is the memory plan of BenchStep's set-up: random weights with a
// RoPE table of the batch's positions, LoRA, one micro-batch, the predictor
// of the table's sparse layers.
func BenchPlan(s BenchSettings) MemoryPlan {
	c := *s.Config
	c.MaxPositionEmbeddings = s.Batch.Seq
	m := MemorySettings{Rows: s.Batch.Rows, Seq: s.Batch.Seq, GradAccum: 1, WeightDType: s.DType,
		Rank: s.LoRA.Rank, Targets: s.LoRA.Targets, GradCheckpoint: s.GradCheckpoint, CheckpointEvery: s.CheckpointEvery}
	if s.Quantize != nil {
		m.Quantize, m.ScaleDType = *s.Quantize, s.DType
	}
	if t := s.Sparsity; t != nil && t.HasSparseLayers() {
		m.SparseAttnLayers, m.SparseMLPs = sparseLayerCounts(t)
		if m.SVDRank = t.Rank; m.SVDRank == 0 {
			m.SVDRank = 8
		}
	}
	return PlanMemory(&c, m)
}
