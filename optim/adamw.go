package optim

import (
	"errors"
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// Param is one trainable tensor and the gradient the model accumulates for it.
// Value and Grad must be f32 tensors of equal length in different buffers.
type Param struct {
	Name        string // for error messages, e.g. "layers.3.q_proj.lora_A"
	Value, Grad *gpu.Tensor
	// NoDecay exempts the parameter from weight decay, as the transformers
	// Trainer exempts biases and norm weights.
	NoDecay bool
}

// AdamWConfig holds the hyper-parameters of torch.optim.AdamW and the max_norm
// of torch.nn.utils.clip_grad_norm_; the learning rate is given per Step.
type AdamWConfig struct {
	Beta1, Beta2 float64
	Eps          float64
	WeightDecay  float64
	// MaxGradNorm is the global gradient-norm clip threshold; 0 disables
	// clipping (the norm is still computed for logging).
	MaxGradNorm float64
}

// DefaultAdamWConfig is torch.optim.AdamW's defaults (betas 0.9, 0.999, eps
// 1e-8, weight decay 0.01) with the transformers Trainer's max_grad_norm 1.
func DefaultAdamWConfig() AdamWConfig {
	return AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, MaxGradNorm: 1}
}

func (c AdamWConfig) validate() error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case !finite(c.Beta1) || c.Beta1 < 0 || c.Beta1 >= 1 || !finite(c.Beta2) || c.Beta2 < 0 || c.Beta2 >= 1:
		return fmt.Errorf("optim: AdamW betas (%g, %g) must lie in [0, 1)", c.Beta1, c.Beta2)
	case !finite(c.Eps) || c.Eps <= 0:
		return fmt.Errorf("optim: AdamW eps %g must be positive", c.Eps)
	case !finite(c.WeightDecay) || c.WeightDecay < 0:
		return fmt.Errorf("optim: AdamW weight decay %g must be non-negative", c.WeightDecay)
	case !finite(c.MaxGradNorm) || c.MaxGradNorm < 0:
		return fmt.Errorf("optim: max gradient norm %g must be non-negative (0 disables clipping)", c.MaxGradNorm)
	}
	return nil
}

const (
	adamwShader        = "adamw.wgsl"
	adamwWorkgroupSize = 256
	// maxReductionCols bounds the row length the gradient norm hands to
	// gpu.RowSumSquares, which gives each row one workgroup: long rows would
	// serialise a large tensor on a few workgroups, short ones waste lanes.
	maxReductionCols = 4096
)

// Stats slots, in elements of the stats tensor (see adamw.wgsl).
const (
	statSumSquares = iota
	statNorm
	statClip
	statCount
)

// Optimizer is AdamW over a fixed list of parameters, with global gradient-norm
// clipping, entirely on the GPU: Step records the norm reduction and the updates
// into the caller's recorder and reads nothing back. It owns the moments m and v
// of every parameter and counts the steps taken.
type Optimizer struct {
	dev    *gpu.Device
	cfg    AdamWConfig
	params []Param
	// state[i] is [2, n]: m then v, one buffer per parameter so that the AdamW
	// dispatch binds it once.
	state []*gpu.Tensor
	// reductionRows[i] is how many rows parameter i's gradient is split into
	// for gpu.RowSumSquares; partialViews[i] is where those row sums go in
	// partials.
	reductionRows []int
	partials      *gpu.Tensor
	partialViews  []*gpu.Tensor
	stats         *gpu.Tensor // [statCount]
	steps         int
}

// NewOptimizer allocates zeroed moments for params (as torch does lazily on the
// first step).
func NewOptimizer(dev *gpu.Device, params []Param, cfg AdamWConfig) (*Optimizer, error) {
	if dev == nil {
		return nil, errors.New("optim: NewOptimizer: nil device")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(params) == 0 {
		return nil, errors.New("optim: NewOptimizer: no parameters")
	}
	o := &Optimizer{dev: dev, cfg: cfg, params: append([]Param(nil), params...)}
	totalRows := 0
	for i, p := range params {
		if err := checkParam(i, p); err != nil {
			return nil, err
		}
		n := p.Value.Len()
		rows := n / reductionCols(n)
		o.reductionRows = append(o.reductionRows, rows)
		totalRows += rows
	}
	fail := func(err error) (*Optimizer, error) {
		o.Release()
		return nil, err
	}
	for _, p := range params {
		s, err := dev.NewTensor(gpu.F32, "adamw moments "+p.Name, 2, p.Value.Len())
		if err != nil {
			return fail(fmt.Errorf("optim: allocating AdamW moments of %s: %w", p.Name, err))
		}
		o.state = append(o.state, s)
	}
	var err error
	if o.partials, err = dev.NewTensor(gpu.F32, "gradient norm partial sums", totalRows); err != nil {
		return fail(fmt.Errorf("optim: allocating gradient norm partial sums: %w", err))
	}
	if o.stats, err = dev.NewTensor(gpu.F32, "gradient norm", statCount); err != nil {
		return fail(fmt.Errorf("optim: allocating gradient norm stats: %w", err))
	}
	offset := 0
	for _, rows := range o.reductionRows {
		o.partialViews = append(o.partialViews, elements(o.partials, offset, rows))
		offset += rows
	}
	return o, nil
}

func checkParam(i int, p Param) error {
	switch {
	case p.Value == nil || p.Grad == nil:
		return fmt.Errorf("optim: parameter %d (%s) lacks a value or gradient tensor", i, p.Name)
	case p.Value.DType != gpu.F32 || p.Grad.DType != gpu.F32:
		return fmt.Errorf("optim: parameter %d (%s) is %s with a %s gradient, want f32", i, p.Name, p.Value.DType, p.Grad.DType)
	case p.Value.Len() == 0:
		return fmt.Errorf("optim: parameter %d (%s) is empty", i, p.Name)
	case p.Value.Len() != p.Grad.Len():
		return fmt.Errorf("optim: parameter %d (%s) has %d elements but its gradient %d", i, p.Name, p.Value.Len(), p.Grad.Len())
	case p.Value.Buf == p.Grad.Buf:
		return fmt.Errorf("optim: parameter %d (%s) shares a buffer with its gradient; the AdamW kernel binds them separately", i, p.Name)
	case p.Value.Len() > math.MaxUint32/2:
		return fmt.Errorf("optim: parameter %d (%s) has %d elements, more than the kernel's u32 moment indices reach", i, p.Name, p.Value.Len())
	}
	return nil
}

// reductionCols is the longest row length of at most maxReductionCols that
// divides n, since gpu.RowSumSquares needs rows*cols = n exactly.
func reductionCols(n int) int {
	best := 1
	for c := 1; c*c <= n; c++ {
		if n%c != 0 {
			continue
		}
		for _, d := range []int{c, n / c} {
			if d <= maxReductionCols && d > best {
				best = d
			}
		}
	}
	return best
}

// Release frees the optimizer's GPU memory (not the parameters).
func (o *Optimizer) Release() {
	for _, s := range o.state {
		s.Release()
	}
	o.partials.Release()
	o.stats.Release()
}

// Steps is the number of steps taken (torch's per-parameter "step").
func (o *Optimizer) Steps() int { return o.steps }

// SetSteps sets the step count, e.g. when resuming with restored moments.
func (o *Optimizer) SetSteps(n int) error {
	if n < 0 {
		return fmt.Errorf("optim: step count %d must be non-negative", n)
	}
	o.steps = n
	return nil
}

// Params is the optimizer's parameter list.
func (o *Optimizer) Params() []Param { return o.params }

// Moments returns views of parameter i's first and second moments.
func (o *Optimizer) Moments(i int) (m, v *gpu.Tensor, err error) {
	if i < 0 || i >= len(o.state) {
		return nil, nil, fmt.Errorf("optim: parameter index %d out of range (%d parameters)", i, len(o.state))
	}
	n := o.params[i].Value.Len()
	return elements(o.state[i], 0, n), elements(o.state[i], n, n), nil
}

// GradNorm is a one-element tensor holding the total gradient norm (before
// clipping, as clip_grad_norm_ returns it) of the latest submitted Step. Reading
// it waits for the GPU, so a trainer reads it only when it logs.
func (o *Optimizer) GradNorm() *gpu.Tensor { return elements(o.stats, statNorm, 1) }

// ClipCoef is a one-element tensor holding the factor the latest submitted Step
// multiplied the gradients by: min(1, max_norm / (norm + 1e-6)), or 1 with
// clipping off.
func (o *Optimizer) ClipCoef() *gpu.Tensor { return elements(o.stats, statClip, 1) }

// Step records one optimizer step with learning rate lr: the global gradient
// norm, then AdamW on every parameter with the clipped gradients. Gradients are
// left unchanged (zero them before the next accumulation). On error the
// recorder holds a partial step and must not be submitted; the step count
// advances only on success.
func (o *Optimizer) Step(rec *gpu.Recorder, lr float64) error {
	if rec == nil {
		return errors.New("optim: Step: nil recorder")
	}
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return fmt.Errorf("optim: Step: learning rate %g must be finite and non-negative", lr)
	}
	if err := o.recordGradNorm(rec); err != nil {
		return err
	}
	kernel, err := o.dev.Kernel(adamwShader, gpu.U32("WORKGROUP_SIZE", adamwWorkgroupSize))
	if err != nil {
		return fmt.Errorf("optim: Step: %w", err)
	}
	t := float64(o.steps + 1)
	c := o.cfg
	base := adamwParams{
		beta1: float32(c.Beta1), beta2: float32(c.Beta2),
		oneMinusBeta1: float32(1 - c.Beta1), oneMinusBeta2: float32(1 - c.Beta2),
		eps:                 float32(c.Eps),
		decay:               float32(1 - lr*c.WeightDecay),
		stepSize:            float32(lr / (1 - math.Pow(c.Beta1, t))),
		biasCorrection2Sqrt: float32(math.Sqrt(1 - math.Pow(c.Beta2, t))),
		maxNorm:             float32(c.MaxGradNorm),
	}
	statsBinding, statsBase := o.stats.View()
	for i, p := range o.params {
		paramBinding, paramBase := p.Value.View()
		gradBinding, gradBase := p.Grad.View()
		stateBinding, stateBase := o.state[i].View()
		params := base
		if p.NoDecay {
			params.decay = 1
		}
		params.n = uint32(p.Value.Len())
		params.paramBase, params.gradBase, params.stateBase = paramBase, gradBase, stateBase
		params.statsBase = statsBase
		params.publish = i == 0
		gx, gy, err := gpu.SplitGrid(uint64(p.Value.Len()+adamwWorkgroupSize-1)/adamwWorkgroupSize, o.dev.Limits.MaxComputeWorkgroupsPerDimension)
		if err != nil {
			return fmt.Errorf("optim: Step: AdamW on %s: %w", p.Name, err)
		}
		bindings := []gpu.Binding{gradBinding, paramBinding, stateBinding, statsBinding}
		if err := rec.Dispatch(gpu.KindOptimizer, kernel, params.bytes(), bindings, gx, gy, 1); err != nil {
			return fmt.Errorf("optim: Step: AdamW on %s: %w", p.Name, err)
		}
	}
	o.steps++
	return nil
}

// recordGradNorm records the sum of squares of all gradients into the stats
// tensor: row sums of squares per tensor into partials, then one sum over
// partials. Both reductions run in a fixed order, so the norm is reproducible.
func (o *Optimizer) recordGradNorm(rec *gpu.Recorder) error {
	for i, p := range o.params {
		rows := o.reductionRows[i]
		if err := gpu.RowSumSquares(rec, o.partialViews[i], p.Grad, rows, p.Grad.Len()/rows); err != nil {
			return fmt.Errorf("optim: Step: gradient norm of %s: %w", p.Name, err)
		}
	}
	total := o.partials.Len()
	if err := gpu.RowSum(rec, elements(o.stats, statSumSquares, 1), o.partials, 1, total); err != nil {
		return fmt.Errorf("optim: Step: gradient norm total: %w", err)
	}
	return nil
}

// adamwParams mirrors struct Params of adamw.wgsl.
type adamwParams struct {
	n, paramBase, gradBase, stateBase          uint32
	beta1, beta2, oneMinusBeta1, oneMinusBeta2 float32
	eps, decay, stepSize, biasCorrection2Sqrt  float32
	maxNorm                                    float32
	statsBase                                  uint32
	publish                                    bool
}

func (p adamwParams) bytes() []byte {
	var publish uint32
	if p.publish {
		publish = 1
	}
	return gpu.PackParams(
		p.n, p.paramBase, p.gradBase, p.stateBase,
		math.Float32bits(p.beta1), math.Float32bits(p.beta2), math.Float32bits(p.oneMinusBeta1), math.Float32bits(p.oneMinusBeta2),
		math.Float32bits(p.eps), math.Float32bits(p.decay), math.Float32bits(p.stepSize), math.Float32bits(p.biasCorrection2Sqrt),
		math.Float32bits(p.maxNorm), p.statsBase, publish, 0,
	)
}

// elements is a 1-D f32 view of n elements of t starting at element offset.
func elements(t *gpu.Tensor, offset, n int) *gpu.Tensor {
	return &gpu.Tensor{Buf: t.Buf, Offset: t.Offset + uint64(4*offset), Shape: []int{n}, DType: gpu.F32}
}
