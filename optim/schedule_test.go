package optim

import (
	"math"
	"testing"
)

// The expected values are worked out by hand from transformers' lr_lambda
// formulas; warm-up 10 and 110 total steps leave 100 decay steps, so progress
// is (step-10)/100.
func TestSchedules(t *testing.T) {
	const warmup, total = 10, 110
	cases := []struct {
		step                     int
		constant, linear, cosine float64
	}{
		{0, 0, 0, 0},
		{1, 0.1, 0.1, 0.1},
		{5, 0.5, 0.5, 0.5},
		{10, 1, 1, 1},
		{35, 1, 0.75, 0.5 * (1 + math.Sqrt2/2)}, // cos(pi/4)
		{60, 1, 0.5, 0.5},                       // cos(pi/2) = 0
		{85, 1, 0.25, 0.5 * (1 - math.Sqrt2/2)}, // cos(3pi/4)
		{110, 1, 0, 0},                          // cos(pi) = -1
		{120, 1, 0, 0.5 * (1 + math.Cos(1.1*math.Pi))},
	}
	for _, c := range cases {
		for _, got := range []struct {
			kind ScheduleKind
			got  float64
			want float64
		}{
			{ScheduleConstant, ConstantWithWarmup(c.step, warmup), c.constant},
			{ScheduleLinear, LinearWithWarmup(c.step, warmup, total), c.linear},
			{ScheduleCosine, CosineWithWarmup(c.step, warmup, total), c.cosine},
		} {
			if math.Abs(got.got-got.want) > 1e-12 {
				t.Errorf("%s at step %d: got %.15g, want %.15g", got.kind, c.step, got.got, got.want)
			}
			s := Schedule{Kind: got.kind, WarmupSteps: warmup, TotalSteps: total, BaseRate: 2e-4}
			if r := s.Rate(c.step); math.Abs(r-2e-4*got.want) > 1e-15 {
				t.Errorf("Schedule{%s}.Rate(%d) = %g, want %g", got.kind, c.step, r, 2e-4*got.want)
			}
		}
	}
}

// Without warm-up the max(1, ...) guards keep the formulas finite: the first
// step runs at the full rate, and zero total steps give 0 rather than NaN.
func TestSchedulesWithoutWarmup(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"constant(0, 0)", ConstantWithWarmup(0, 0), 1},
		{"linear(0, 0, 4)", LinearWithWarmup(0, 0, 4), 1},
		{"linear(1, 0, 4)", LinearWithWarmup(1, 0, 4), 0.75},
		{"linear(0, 0, 0)", LinearWithWarmup(0, 0, 0), 0},
		{"cosine(0, 0, 4)", CosineWithWarmup(0, 0, 4), 1},
		{"cosine(2, 0, 4)", CosineWithWarmup(2, 0, 4), 0.5},
		{"cosine(0, 0, 0)", CosineWithWarmup(0, 0, 0), 1},
	} {
		if math.Abs(c.got-c.want) > 1e-12 {
			t.Errorf("%s = %.15g, want %g", c.name, c.got, c.want)
		}
	}
}

func TestParseScheduleKind(t *testing.T) {
	for name, want := range map[string]ScheduleKind{
		"constant": ScheduleConstant, "constant_with_warmup": ScheduleConstant,
		"linear": ScheduleLinear, " Cosine ": ScheduleCosine,
	} {
		got, err := ParseScheduleKind(name)
		if err != nil || got != want {
			t.Errorf("ParseScheduleKind(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := ParseScheduleKind("polynomial"); err == nil {
		t.Error("ParseScheduleKind(polynomial) succeeded")
	}
}
