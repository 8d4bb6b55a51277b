package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/predictor"
)

// ErrOutOfMemory reports a run whose memory plan exceeds the limit, or a
// device that ran out of memory.
var ErrOutOfMemory = errors.New("does not fit in GPU memory")

// ParseSize reads a byte count such as "16GiB", "16G" (binary), "16GB"
// (decimal), "512MiB" or "1073741824"; empty is 0.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		scale  float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1},
	}
	scale := 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, scale = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.scale
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || v <= 0 || v*scale >= 1<<63 {
		return 0, fmt.Errorf("%q: want a positive size such as 16GiB, 12GB or 8192MiB", s)
	}
	return uint64(v * scale), nil
}

// MemorySettings are the plan's settings of a run of cfg on a model of mcfg
// with micro-batches of seq tokens.
func (c Config) MemorySettings(mcfg *model.Config, seq int, lim gpu.Limits) (MemorySettings, error) {
	s := MemorySettings{Rows: c.BatchSize, Seq: seq, GradAccum: c.GradAccum, WeightDType: gpu.F32,
		Full: c.Full, Rank: c.Rank, GradCheckpoint: c.GradCheckpoint, CheckpointEvery: c.CheckpointEvery,
		EvalLoss: c.EvalData != "" && c.EvalMetric == "loss", Limits: lim}
	if c.EvalData != "" && c.EvalMetric == "exact-match" {
		s.EvalGenerate = seq + c.EvalMaxNewTokens
	}
	if c.BF16 {
		s.WeightDType = gpu.BF16
	}
	switch { // quantized at load, or an MLX-quantized checkpoint
	case c.Quantize != 0:
		s.Quantize = model.Quantization{Bits: c.Quantize, GroupSize: c.GroupSize}
	case mcfg != nil && mcfg.Quantization != nil:
		s.Quantize = mcfg.Quantization.Default
	}
	// Quantized scales and biases keep the checkpoint's type (for this plan
	// and its --quantize alternative); a shape without a checkpoint is one of
	// the published bf16/f16 models.
	s.ScaleDType = gpu.BF16
	if c.Model != "" {
		if dt, err := model.CheckpointScaleDType(c.Model); err == nil {
			s.ScaleDType = dt
		}
	}
	if !c.Full {
		targets, err := lora.ParseTargets(c.Targets)
		if err != nil {
			return s, err
		}
		s.Targets = targets
		if c.AdapterInit != "" {
			// The adapter's own rank is read only when it loads; the flag's
			// is the plan's guess.
			s.Rank = max(s.Rank, 1)
		}
		table, _, err := ResolveSparsity(c.Sparsity, mcfg)
		if err != nil {
			return s, err
		}
		if table != nil {
			s.SVDRank = table.Rank
			if s.SVDRank == 0 {
				s.SVDRank = 8
			}
			s.SparseAttnLayers, s.SparseMLPs = sparseLayerCounts(table)
		}
	}
	return s, nil
}

// planMemory predicts the run's peak GPU memory and refuses, before anything
// is allocated, a run that would not fit the limit (--memory-limit, else the
// adapter's reported memory).
func (r *run) planMemory(mcfg *model.Config) error {
	s, err := r.cfg.MemorySettings(mcfg, r.plan.Seq, r.dev.Limits)
	if err != nil {
		return err
	}
	r.plan.Memory, r.plan.MemorySettings = PlanMemory(mcfg, s), s
	// Nothing is allocated yet: the peak the metrics log is this run's.
	r.dev.ResetPeakBytes()
	limit, _ := ParseSize(r.cfg.MemoryLimit) // Validate checked it
	if limit == 0 {
		limit = r.dev.Info.MemoryBytes
	}
	return CheckMemory(mcfg, s, limit)
}

// CheckMemory returns an error wrapping ErrOutOfMemory when the plan of s
// exceeds limit (0: no limit), naming settings that need less and what they
// need: "needs 21.4 GiB, limit 16.0 GiB; --grad-checkpoint: 17.2 GiB; ...".
func CheckMemory(mcfg *model.Config, s MemorySettings, limit uint64) error {
	need := PlanMemory(mcfg, s).PeakBytes
	if limit == 0 || need <= limit {
		return nil
	}
	msg := fmt.Sprintf("the memory plan needs %s, limit %s", sizeString(need), sizeString(limit))
	for _, alt := range Alternatives(mcfg, s) {
		msg += fmt.Sprintf("; %s: %s", alt.Flags, sizeString(PlanMemory(mcfg, alt.Settings).PeakBytes))
	}
	return fmt.Errorf("%w: %s (see sparselora plan)", ErrOutOfMemory, msg)
}

// Alternative is a change of settings that needs less memory.
type Alternative struct {
	Flags    string
	Settings MemorySettings
}

// Alternatives are the memory-saving settings s does not use yet for a model
// of mcfg, each adding to the one before, in the order they cost accuracy or
// speed: checkpointing and checkpoint segments (compute only), bf16 weights,
// 4-bit weights, one sequence per micro-batch.
func Alternatives(mcfg *model.Config, s MemorySettings) []Alternative {
	var out []Alternative
	var flags []string
	cur := s
	try := func(flag string, change func(*MemorySettings)) {
		change(&cur)
		flags = append(flags, flag)
		out = append(out, Alternative{Flags: strings.Join(flags, " "), Settings: cur})
	}
	if !s.GradCheckpoint {
		try("--grad-checkpoint", func(m *MemorySettings) { m.GradCheckpoint = true })
	}
	if every := model.CheckpointSegment(mcfg.NumHiddenLayers); every > 1 && s.CheckpointEvery <= 1 {
		try(fmt.Sprintf("--checkpoint-every %d", every), func(m *MemorySettings) { m.CheckpointEvery = every })
	}
	if !s.Full && s.Quantize.Bits == 0 && s.WeightDType != gpu.BF16 {
		try("--bf16", func(m *MemorySettings) { m.WeightDType = gpu.BF16 })
	}
	if !s.Full && (s.Quantize.Bits == 0 || s.Quantize.Bits > 4) {
		try("--quantize 4", func(m *MemorySettings) { m.Quantize = model.Quantization{Bits: 4, GroupSize: 64} })
	}
	if s.Rows > 1 {
		try("--batch-size 1", func(m *MemorySettings) {
			m.GradAccum *= m.Rows
			m.Rows = 1
		})
	}
	return out
}

// sizeString writes a byte count in GiB (MiB below 1 GiB) with one decimal.
func sizeString(n uint64) string {
	if n < 1<<30 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// DryRun reads the run's config.json and data and returns its plan, the
// memory plan for a device of limits lim included, without a device or any
// GPU allocation: what `train --dry-run` prints.
func DryRun(ctx context.Context, cfg Config, lim gpu.Limits) (Plan, error) {
	if err := cfg.Validate(); err != nil {
		return Plan{}, err
	}
	r := &run{cfg: cfg}
	configJSON, configPath, err := cfg.sourceConfig()
	if err != nil {
		return Plan{}, err
	}
	mcfg, err := model.ParseConfig(configJSON, configPath)
	if err != nil {
		return Plan{}, err
	}
	if err := r.loadData(ctx, mcfg); err != nil {
		return Plan{}, err
	}
	s, err := cfg.MemorySettings(mcfg, r.plan.Seq, lim)
	if err != nil {
		return Plan{}, err
	}
	r.plan.Config, r.plan.ModelDir = mcfg, cfg.Model
	r.plan.Total = mcfg.ParameterCount()
	r.plan.Memory, r.plan.MemorySettings = PlanMemory(mcfg, s), s
	return r.plan, nil
}

// sparseLayerCounts counts the table's layers with sparse attention and with
// sparse MLPs (none in dense mode).
func sparseLayerCounts(t *predictor.SparsityConfig) (attn, mlp int) {
	if t.Dense {
		return 0, 0
	}
	for _, l := range t.Layers {
		if l.Attention > 0 {
			attn++
		}
		if l.MLP > 0 {
			mlp++
		}
	}
	return attn, mlp
}
