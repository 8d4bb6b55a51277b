package evaluate

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/infer"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/tokenizer"
)

// Result is one example's exact-match outcome.
type Result struct {
	Line       int    `json:"line"`
	Prompt     string `json:"prompt"`
	Completion string `json:"completion"`
	Predicted  string `json:"predicted"`
	Answer     string `json:"answer"`
	Correct    bool   `json:"correct"`
}

// Summary is an exact-match accuracy with its 95 % Wilson score interval.
type Summary struct {
	N, Correct        int
	Accuracy, Lo, Hi  float64
	UnscorableSkipped int
}

// ExactMatch completes every example's prompt greedily (up to maxNewTokens)
// and compares the answer extracted from the completion with the example's
// answer. onResult, when set, sees each result as it is decided.
func ExactMatch(ctx context.Context, sess *infer.Session, ds *data.Dataset, maxNewTokens int, onResult func(Result)) (Summary, []Result, error) {
	var sum Summary
	var results []Result
	for _, ex := range ds.Examples {
		if err := ctx.Err(); err != nil {
			return sum, results, err
		}
		if ex.PromptLen == 0 || ex.Answer == "" {
			return sum, results, fmt.Errorf("%s:%d: exact match needs a prompt and an answer (prompt/completion, messages, Alpaca or answer fields; format %s has none)", ds.Path, ex.Line, ds.Format)
		}
		c, err := sess.Complete(ctx, ex.IDs[:ex.PromptLen], infer.Options{MaxNewTokens: maxNewTokens})
		if err != nil {
			return sum, results, fmt.Errorf("%s:%d: %w", ds.Path, ex.Line, err)
		}
		predicted, correct := Match(c.Text, ex.Answer)
		r := Result{Line: ex.Line, Prompt: ex.Prompt, Completion: c.Text, Predicted: predicted, Answer: ex.Answer, Correct: correct}
		results = append(results, r)
		sum.N++
		if correct {
			sum.Correct++
		}
		if onResult != nil {
			onResult(r)
		}
	}
	if sum.N > 0 {
		sum.Accuracy = float64(sum.Correct) / float64(sum.N)
		sum.Lo, sum.Hi = Wilson(sum.Correct, sum.N)
	}
	return sum, results, nil
}

var (
	numberPattern = regexp.MustCompile(`-?\d[\d,]*(?:\.\d+)?`)
	// The multiple-choice answer families of the commonsense sets (BoolQ,
	// PIQA, SIQA, HellaSwag, WinoGrande, ARC, OBQA) as LLM-Adapters writes
	// them.
	choiceFamilies = []*regexp.Regexp{
		regexp.MustCompile(`true|false`),
		regexp.MustCompile(`solution\d+`),
		regexp.MustCompile(`answer\d+`),
		regexp.MustCompile(`ending\d+`),
		regexp.MustCompile(`option\d+`),
	}
	letterPattern = regexp.MustCompile(`\b[A-E]\b`)
)

// Match extracts the predicted answer from a completion the way the
// reference answer calls for and says whether it is right:
//   - a number (math sets): the last number in the completion, compared
//     numerically (within 1e-3, as LLM-Adapters does);
//   - a choice word (true/false, option2, answer3, ...): the first word of
//     the same family in the completion, lower-cased;
//   - a letter A-E: the first standalone capital letter A-E;
//   - anything else: the trimmed completion, compared as text.
func Match(completion, answer string) (predicted string, correct bool) {
	answer = strings.TrimSpace(answer)
	if want, ok := parseNumber(answer); ok {
		found := numberPattern.FindAllString(completion, -1)
		if len(found) == 0 {
			return "", false
		}
		predicted = found[len(found)-1]
		got, ok := parseNumber(predicted)
		return predicted, ok && math.Abs(got-want) <= 1e-3
	}
	lower := strings.ToLower(answer)
	for _, family := range choiceFamilies {
		if family.FindString(lower) == lower {
			predicted = family.FindString(strings.ToLower(completion))
			return predicted, predicted == lower
		}
	}
	if len(answer) == 1 && answer[0] >= 'A' && answer[0] <= 'E' {
		predicted = letterPattern.FindString(completion)
		return predicted, predicted == answer
	}
	predicted = strings.TrimSpace(completion)
	return predicted, predicted == answer
}

func parseNumber(s string) (float64, bool) {
	v, err := strconv.ParseFloat(strings.ReplaceAll(strings.TrimSpace(s), ",", ""), 64)
	return v, err == nil && !math.IsInf(v, 0) && !math.IsNaN(v)
}

// Wilson is the 95 % Wilson score interval of a proportion of correct out of
// n (better than the normal approximation for small n or extreme rates).
func Wilson(correct, n int) (lo, hi float64) {
	if n == 0 {
		return 0, 1
	}
	const z = 1.959963984540054
	p := float64(correct) / float64(n)
	nf := float64(n)
	denom := 1 + z*z/nf
	center := (p + z*z/(2*nf)) / denom
	half := z * math.Sqrt(p*(1-p)/nf+z*z/(4*nf*nf)) / denom
	return max(0, center-half), min(1, center+half)
}

// ModelExactMatch measures the exact match of the model in modelDir (its
// tokenizer included, no adapter) on the JSONL file dataPath.
func ModelExactMatch(ctx context.Context, dev *gpu.Device, modelDir, dataPath string, maxNewTokens int) (Summary, error) {
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		return Summary{}, err
	}
	m, err := model.Load(dev, modelDir, gpu.F32)
	if err != nil {
		return Summary{}, err
	}
	defer m.Release()
	ds, err := data.LoadContext(ctx, dataPath, tok, data.Options{VocabSize: m.Config.VocabSize})
	if err != nil {
		return Summary{}, err
	}
	sess, err := infer.NewSession(m, tok, modelDir, ds.MaxLen+maxNewTokens)
	if err != nil {
		return Summary{}, err
	}
	defer sess.Release()
	sum, _, err := ExactMatch(ctx, sess, ds, maxNewTokens, nil)
	return sum, err
}
