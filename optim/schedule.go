package optim

import (
	"fmt"
	"math"
	"strings"
)

// Learning-rate multipliers of transformers' schedules, as the lr_lambda of their
// LambdaLR: step is the number of optimizer steps already taken (0 for the
// first step, so a warm-up starts at lr 0 as in the transformers Trainer),
// warmup the number of warm-up steps and total the number of training steps.
// The learning rate of a step is the base rate times the multiplier.

// warmupFraction is the shared linear warm-up: step / max(1, warmup).
func warmupFraction(step, warmup int) float64 {
	return float64(step) / float64(max(1, warmup))
}

// ConstantWithWarmup is get_constant_schedule_with_warmup: a linear ramp from 0
// over warmup steps, then 1.
func ConstantWithWarmup(step, warmup int) float64 {
	if step < warmup {
		return warmupFraction(step, warmup)
	}
	return 1
}

// LinearWithWarmup is get_linear_schedule_with_warmup: the warm-up ramp, then a
// linear decay to 0 at step total, and 0 after it.
func LinearWithWarmup(step, warmup, total int) float64 {
	if step < warmup {
		return warmupFraction(step, warmup)
	}
	return max(0, float64(total-step)/float64(max(1, total-warmup)))
}

// CosineWithWarmup is get_cosine_schedule_with_warmup with its default half
// cycle: the warm-up ramp, then 0.5 (1 + cos(pi progress)) with progress going
// from 0 at the end of warm-up to 1 at step total. Like transformers, it does
// not clamp progress, so steps past total climb back up the cosine.
func CosineWithWarmup(step, warmup, total int) float64 {
	if step < warmup {
		return warmupFraction(step, warmup)
	}
	const cycles = 0.5
	progress := float64(step-warmup) / float64(max(1, total-warmup))
	return max(0, 0.5*(1+math.Cos(math.Pi*cycles*2*progress)))
}

// ScheduleKind names a learning-rate schedule.
type ScheduleKind int

// The schedules, with their transformers lr_scheduler_type names.
const (
	ScheduleConstant ScheduleKind = iota // "constant_with_warmup"
	ScheduleLinear                       // "linear"
	ScheduleCosine                       // "cosine"
)

func (k ScheduleKind) String() string {
	switch k {
	case ScheduleConstant:
		return "constant"
	case ScheduleLinear:
		return "linear"
	case ScheduleCosine:
		return "cosine"
	}
	return fmt.Sprintf("ScheduleKind(%d)", int(k))
}

// ParseScheduleKind accepts "constant" (or transformers' "constant_with_warmup"),
// "linear" and "cosine".
func ParseScheduleKind(name string) (ScheduleKind, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "constant", "constant_with_warmup":
		return ScheduleConstant, nil
	case "linear":
		return ScheduleLinear, nil
	case "cosine":
		return ScheduleCosine, nil
	}
	return 0, fmt.Errorf("optim: unknown learning-rate schedule %q (want constant, linear or cosine)", name)
}

// Schedule is a learning-rate schedule with its step counts.
type Schedule struct {
	Kind        ScheduleKind
	WarmupSteps int
	TotalSteps  int
	BaseRate    float64
}

// Rate is the learning rate of the step taken after step steps.
func (s Schedule) Rate(step int) float64 { return s.BaseRate * s.Multiplier(step) }

// Multiplier is the schedule's factor after step steps (see ConstantWithWarmup);
// a Kind outside the named ones counts as constant.
func (s Schedule) Multiplier(step int) float64 {
	switch s.Kind {
	case ScheduleLinear:
		return LinearWithWarmup(step, s.WarmupSteps, s.TotalSteps)
	case ScheduleCosine:
		return CosineWithWarmup(step, s.WarmupSteps, s.TotalSteps)
	}
	return ConstantWithWarmup(step, s.WarmupSteps)
}
