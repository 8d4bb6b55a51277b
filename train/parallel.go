package train

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math"
	"strings"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/evaluate"
)

// Data parallelism (SPEC.md section 12): every process runs the same loop on
// its own share of each micro-batch; these helpers are where the run meets
// the other processes. Without a group they do nothing.

// world is the number of processes training together (1 alone).
func (r *run) world() int {
	if r.cfg.Group == nil {
		return 1
	}
	return r.cfg.Group.Size()
}

// lead reports whether this process writes the run directory (rank 0, or
// the only one).
func (r *run) lead() bool { return r.cfg.Group == nil || r.cfg.Group.Rank() == 0 }

// shard takes this process's rows of each micro-batch of a step.
func (r *run) shard(micro []data.Batch) ([]data.Batch, error) {
	if r.cfg.Group == nil {
		return micro, nil
	}
	out := make([]data.Batch, len(micro))
	for i, b := range micro {
		var err error
		if out[i], err = data.Shard(b, r.cfg.Group.Rank(), r.world()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// stepAgreement is what the processes agree on after every step.
type stepAgreement struct {
	stop, save         bool
	tokens             int
	denseFLOPs, actual float64
}

// agree sums the step's figures over the processes: any process's stop or
// save request holds for all (a signal or the window reaches rank 0), and
// tokens and FLOPs become global.
func (r *run) agree(local stepAgreement) (stepAgreement, error) {
	if r.cfg.Group == nil {
		return local, nil
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	v := []float64{flag(local.stop), flag(local.save), float64(local.tokens), local.denseFLOPs, local.actual}
	if err := r.cfg.Group.SumFloat64(v); err != nil {
		return stepAgreement{}, err
	}
	return stepAgreement{stop: v[0] > 0, save: v[1] > 0, tokens: int(v[2]), denseFLOPs: v[3], actual: v[4]}, nil
}

// setUpParallel joins the trainer to the group and checks that every
// process was started on the same model, data and settings.
func (r *run) setUpParallel(resumeStep int) error {
	g := r.cfg.Group
	if g == nil {
		return nil
	}
	r.reducer = &hostReducer{ctx: context.Background(), dev: r.dev, group: g}
	r.t.Reducer = r.reducer
	mine := r.identity(resumeStep)
	theirs, err := g.BroadcastBytes([]byte(mine), 0)
	if err != nil {
		return fmt.Errorf("comparing the processes' settings: %w", err)
	}
	differs := []float64{0}
	if string(theirs) != mine {
		differs[0] = 1
	}
	if err := g.SumFloat64(differs); err != nil {
		return fmt.Errorf("comparing the processes' settings: %w", err)
	}
	if string(theirs) != mine {
		return fmt.Errorf("rank %d was started differently from rank 0: %s; start every process with the same command and files",
			g.Rank(), identityDiff(string(theirs), mine))
	}
	if differs[0] > 0 {
		return fmt.Errorf("%d of the %d processes were started differently from rank 0 (their messages say how)", int(differs[0]), g.Size())
	}
	return nil
}

// identity lists, one "key=value" a line, what must be equal on every
// process: the model, the data's content and every setting that decides
// the result or the sequence of collective calls. The model files' sizes
// and times (the resume fingerprint's "model") may differ between hosts
// that hold copies: the model is compared by path and config.json, and by
// content with --verify.
func (r *run) identity(resumeStep int) string {
	c := r.cfg
	var b strings.Builder
	add := func(k string, v any) { fmt.Fprintf(&b, "%s=%v\n", k, v) }
	add("model", r.plan.ModelDir)
	add("config.json sha256", fmt.Sprintf("%x", sha256.Sum256(r.configJSON))[:16])
	add("data", c.Data)
	if d := r.plan.EvalData; d != nil {
		add("eval-data", c.EvalData)
		add("eval-data sha256", short(d.SHA256))
	}
	add("processes", r.world())
	add("resumed from step", resumeStep)
	settings := strings.Fields(r.fprint)
	settings = append(settings, "adapter-init="+c.AdapterInit, fmt.Sprintf("log-every=%d", c.LogEvery), fmt.Sprintf("eval-every=%d", c.EvalEvery),
		"eval-metric="+c.EvalMetric, fmt.Sprintf("eval-max-new-tokens=%d", c.EvalMaxNewTokens),
		fmt.Sprintf("save-every=%d", c.SaveEvery), fmt.Sprintf("resume=%t", c.Resume), fmt.Sprintf("grad-checkpoint=%t", c.GradCheckpoint), fmt.Sprintf("checkpoint-every=%d", max(c.CheckpointEvery, 1)))
	for _, kv := range settings {
		k, v, _ := strings.Cut(kv, "=")
		if k == fpModel {
			continue
		}
		add("setting "+k, v)
	}
	return b.String()
}

// identityDiff names the lines of two identities that differ.
func identityDiff(lead, mine string) string {
	theirs := map[string]string{}
	for _, line := range strings.Split(lead, "\n") {
		k, v, _ := strings.Cut(line, "=")
		theirs[k] = v
	}
	var diffs []string
	for _, line := range strings.Split(mine, "\n") {
		k, v, _ := strings.Cut(line, "=")
		if theirs[k] != v {
			diffs = append(diffs, fmt.Sprintf("%s is %q on rank 0, %q here", k, theirs[k], v))
		}
	}
	return strings.Join(diffs, "; ")
}

// evaluateLossShared evaluates this process's share of the evaluation data
// and combines the shares' losses, weighted by their target counts.
func (r *run) evaluateLossShared(ctx context.Context) (evaluate.LossResult, error) {
	g := r.cfg.Group
	shard := data.ShardExamples(r.evalData, g.Rank(), g.Size())
	v := []float64{0, 0}
	if len(shard.Examples) > 0 {
		ev, err := r.eval.Loss(ctx, shard)
		if err != nil {
			return evaluate.LossResult{}, err
		}
		v[0], v[1] = ev.Loss*float64(ev.Targets), float64(ev.Targets)
	}
	if err := g.SumFloat64(v); err != nil {
		return evaluate.LossResult{}, fmt.Errorf("gathering the evaluation: %w", err)
	}
	if v[1] == 0 {
		return evaluate.LossResult{}, fmt.Errorf("%s: no scored token to evaluate", r.evalData.Path)
	}
	mean := v[0] / v[1]
	return evaluate.LossResult{Loss: mean, Perplexity: math.Exp(mean), Targets: int(v[1])}, nil
}

// exactMatchShared runs this process's share of the exact-match evaluation
// and sums the shares' counts.
func (r *run) exactMatchShared(ctx context.Context) (evaluate.Summary, error) {
	g := r.cfg.Group
	shard := data.ShardExamples(r.evalData, g.Rank(), g.Size())
	var local evaluate.Summary
	if len(shard.Examples) > 0 {
		var err error
		if local, _, err = evaluate.ExactMatch(ctx, r.session, shard, r.cfg.EvalMaxNewTokens, nil); err != nil {
			return evaluate.Summary{}, err
		}
	}
	v := []float64{float64(local.N), float64(local.Correct), float64(local.UnscorableSkipped)}
	if err := g.SumFloat64(v); err != nil {
		return evaluate.Summary{}, fmt.Errorf("gathering the evaluation: %w", err)
	}
	sum := evaluate.Summary{N: int(v[0]), Correct: int(v[1]), UnscorableSkipped: int(v[2])}
	if sum.N > 0 {
		sum.Accuracy = float64(sum.Correct) / float64(sum.N)
		sum.Lo, sum.Hi = evaluate.Wilson(sum.Correct, sum.N)
	}
	return sum, nil
}

// logExchange adds the gradient exchange's figures since the last log to rec.
func (r *run) logExchange(rec *Record) {
	if r.reducer != nil {
		rec.AllReduceBytes, rec.AllReduceMS, rec.GradSyncMS = r.reducer.syncStats()
	}
}
