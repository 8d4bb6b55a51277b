package plot

import (
	"fmt"
	"strings"
	"testing"
)

// metrics.jsonl's tokens is a running total: the summary's total is the last
// one, not their sum.
func TestSummaryTokensAreTheRunningTotal(t *testing.T) {
	log := `{"step":1,"loss":3,"tokens":1092,"step_tokens":1092}
{"step":2,"loss":2.5,"tokens":2184,"step_tokens":1092}
{"step":3,"loss":2,"tokens":3276,"step_tokens":1092}
{"step":3,"eval_loss":2.1}
`
	recs, err := ParseMetrics(strings.NewReader(log), "metrics.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if s := Stats(recs); s.Tokens != 3276 {
		t.Errorf("Stats.Tokens = %d, want 3276", s.Tokens)
	}
	if summary := Summary(recs, nil, nil); !strings.Contains(summary, fmt.Sprintf("| tokens trained on | %d |", 3276)) {
		t.Errorf("summary:\n%s", summary)
	}
}

// FuzzParseMetrics feeds the metrics reader arbitrary logs: no panic, errors
// name FILE:LINE, and the summary of what it reads renders.
func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte(`{"step":1,"loss":3,"tokens":10}` + "\n" + `{"step":2,"eval_loss":1.5}` + "\n" + `{"step":3,"lo`))
	f.Add([]byte("\n\n{\"step\":-4,\"kept_mlp\":[1,2]}\n{}\n"))
	f.Add([]byte("{\"step\":1e400}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		recs, err := ParseMetrics(strings.NewReader(string(raw)), "m.jsonl")
		if err != nil && !strings.HasPrefix(err.Error(), "m.jsonl:") {
			t.Fatalf("error does not name FILE:LINE: %v", err)
		}
		Summary(recs, nil, nil)
	})
}
