package plot

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPlotReadMetrics(t *testing.T) {
	path := writeTemp(t, "metrics.jsonl", `{"step":1,"epoch":0.05,"loss":2.31,"lr":0.0002,"grad_norm":1.7,"tokens":2048,"tokens_per_s":812.5,"ms_per_step":2520.1,"flops_ratio":1.0,"sparse":false,"kept_mlp":[1,1,0.01],"kept_attn":[1,1,0.25],"future_field":{"x":1}}

{"step":2,"loss":2.0,"sparse":true,"eval_loss":1.9,"eval_accuracy":0.42}
{"step":2,"eval_loss":1.8}
{"step":3,"loss":1.`) // the trainer is still writing step 3
	recs, err := ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3 (the partial last line skipped): %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Step != 1 || r.Epoch != 0.05 || r.Loss != 2.31 || r.LR != 0.0002 || r.GradNorm != 1.7 || r.Tokens != 2048 ||
		r.TokensPerS != 812.5 || r.MSPerStep != 2520.1 || r.FLOPsRatio != 1 || r.Sparse ||
		len(r.KeptMLP) != 3 || r.KeptMLP[2] != 0.01 || len(r.KeptAttn) != 3 || r.KeptAttn[2] != 0.25 {
		t.Errorf("record 1: %+v", r)
	}
	if !r.HasTrain() || r.HasEval() || !math.IsNaN(r.EvalLoss) {
		t.Errorf("record 1 is a training record without eval: %+v", r)
	}
	if r := recs[1]; !r.Sparse || !r.HasTrain() || !r.HasEval() || r.EvalLoss != 1.9 || r.EvalAccuracy != 0.42 || !math.IsNaN(r.LR) || r.Tokens != 0 {
		t.Errorf("record 2: %+v", r)
	}
	if r := recs[2]; r.HasTrain() || !r.HasEval() || r.EvalLoss != 1.8 || !math.IsNaN(r.EvalAccuracy) || !math.IsNaN(r.FLOPsRatio) {
		t.Errorf("record 3 (eval only): %+v", r)
	}
}

func TestPlotReadMetricsErrorsNameFileAndLine(t *testing.T) {
	good := `{"step":1,"loss":2}` + "\n"
	for _, c := range []struct {
		name, content, want string
	}{
		{"bad json", good + good + "{\"step\":3,\"loss\":}\n", ":3:"},
		{"no step", good + `{"loss":2}` + "\n", `:2: no "step"`},
		{"negative step", `{"step":-1}` + "\n", ":1: step -1"},
		{"kept out of range", good + `{"step":2,"kept_mlp":[1,1.5]}` + "\n", ":2: kept_mlp[1] = 1.5"},
		{"wrong type", `{"step":"one"}` + "\n", ":1:"},
		{"not an object", good + "[1,2]\n" + good, ":2:"},
	} {
		path := writeTemp(t, "metrics.jsonl", c.content)
		_, err := ReadMetrics(path)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), path+c.want) {
			t.Errorf("%s: error %q does not name %s%s", c.name, err, path, c.want)
		}
	}
	if _, err := ReadMetrics(filepath.Join(t.TempDir(), "missing.jsonl")); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Errorf("missing file: %v", err)
	}
}

// SteadyThroughput skips the first interval (kernel compilation) and, for a
// sparse run, every interval that did not run sparse from end to end.
func TestSteadyThroughput(t *testing.T) {
	recs := []Record{
		{MSPerStep: 900, TokensPerS: 1},
		{MSPerStep: 100, TokensPerS: 10},
		{MSPerStep: 60, TokensPerS: 30, Sparse: true},
		{MSPerStep: 40, TokensPerS: 50, Sparse: true},
		{MSPerStep: 20, TokensPerS: 70, Sparse: true},
	}
	if ms, tps := SteadyThroughput(recs, false); ms != 55 || tps != 40 {
		t.Errorf("dense: %g ms/step, %g tokens/s, want 55 and 40", ms, tps)
	}
	if ms, tps := SteadyThroughput(recs, true); ms != 30 || tps != 60 {
		t.Errorf("sparse: %g ms/step, %g tokens/s, want 30 and 60", ms, tps)
	}
	if ms, tps := SteadyThroughput(recs[:1], false); ms != 0 || tps != 0 {
		t.Errorf("one record: %g, %g, want zeros", ms, tps)
	}
}
