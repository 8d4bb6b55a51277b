package train

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A resumed run keeps every valid record up to its checkpoint, also those
// after a line it cannot read, and drops the steps past the checkpoint.
func TestResumeKeepsValidMetricsAfterABadLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), MetricsFileName)
	log := `{"step":1,"loss":3.5,"tokens":10,"step_tokens":10}
{"step":2,"loss":3.
{"step":3,"loss":3.25,"tokens":30,"step_tokens":20}
not json at all
{"step":4,"loss":3.0,"tokens":40,"step_tokens":10}
{"step":5,"loss":2.5,"tokens":50,"step_tokens":10}
{"step":6,"lo`
	os.WriteFile(path, []byte(log), 0o644)
	m, last, err := openMetrics(path, 4)
	if err != nil {
		t.Fatal(err)
	}
	m.close()
	raw, _ := os.ReadFile(path)
	var steps []string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		steps = append(steps, strings.SplitN(strings.TrimPrefix(line, `{"step":`), ",", 2)[0])
	}
	if strings.Join(steps, " ") != "1 3 4" {
		t.Errorf("kept steps %v, want 1 3 4:\n%s", steps, raw)
	}
	if last.Step != 4 || last.Loss != 3.0 || last.Tokens != 40 {
		t.Errorf("last record %+v, want step 4", last)
	}
}

// FuzzKeptMetrics feeds the resume filter of metrics.jsonl arbitrary logs:
// it must not panic, and what it keeps must be records it would keep again.
func FuzzKeptMetrics(f *testing.F) {
	f.Add([]byte(`{"step":1,"loss":3.5,"tokens":10}`+"\n"+`{"step":2,"lo`), 1)
	f.Add([]byte("\n\r\n{}\n[1]\n{\"step\":-1}\n{\"step\":1e99}\n"), 5)
	f.Fuzz(func(t *testing.T, raw []byte, keep int) {
		kept, last := keptMetrics(raw, keep)
		again, lastAgain := keptMetrics(kept, keep)
		if string(again) != string(kept) || lastAgain.Step != last.Step {
			t.Fatalf("not stable: %q then %q", kept, again)
		}
		if len(kept) > 0 && (last.Step <= 0 || last.Step > keep) {
			t.Fatalf("last kept step %d outside 1..%d", last.Step, keep)
		}
	})
}
