package evaluate

import (
	"math"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		completion, answer, predicted string
		correct                       bool
	}{
		{"She has 3 apples, then 5 more: 3 + 5 = 8. The answer is 8", "8", "8", true},
		{"The answer is 1,234.", "1234", "1,234", true},
		{"It costs 12.50 dollars", "12.5", "12.50", true},
		{"So -7", "-7.0", "-7", true},
		{"The answer is 9", "8", "9", false},
		{"no number here", "8", "", false},
		{"the correct answer is option2", "option2", "option2", true},
		{"Answer: option1 because option2 is wrong", "option2", "option1", false},
		{"True, the statement holds", "true", "true", true},
		{"the answer is ending3", "ending3", "ending3", true},
		{"I pick solution1", "solution2", "solution1", false},
		{"The answer is B.", "B", "B", true},
		{"A tricky one: C", "C", "A", false},
		{"  Paris \n", "Paris", "Paris", true},
		{"Paris, France", "Paris", "Paris, France", false},
	} {
		predicted, correct := Match(c.completion, c.answer)
		if predicted != c.predicted || correct != c.correct {
			t.Errorf("Match(%q, %q) = %q, %t; want %q, %t", c.completion, c.answer, predicted, correct, c.predicted, c.correct)
		}
	}
}

// TestWilson checks the interval against values computed by hand from the
// formula (and statsmodels' proportion_confint(method="wilson")).
func TestWilson(t *testing.T) {
	for _, c := range []struct {
		k, n   int
		lo, hi float64
	}{
		{50, 100, 0.4038315, 0.5961685},
		{0, 10, 0, 0.2775328},
		{10, 10, 0.7224672, 1},
		{81, 100, 0.7222115, 0.8748525},
	} {
		lo, hi := Wilson(c.k, c.n)
		if math.Abs(lo-c.lo) > 1e-6 || math.Abs(hi-c.hi) > 1e-6 {
			t.Errorf("Wilson(%d, %d) = [%.7f, %.7f], want [%.7f, %.7f]", c.k, c.n, lo, hi, c.lo, c.hi)
		}
	}
}
