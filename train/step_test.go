package train

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

var testDevice *gpu.Device

func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &testDevice)) }

const tinyConfig = `{"model_type": "llama", "vocab_size": 61, "hidden_size": 24, "intermediate_size": 40,
	"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
	"max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": false}`

// tinyModel is a small random model with LoRA on every projection, whose A
// and B are both random so that every gradient is non-zero.
func tinyModel(t *testing.T) (*model.Model, *lora.Set) {
	t.Helper()
	cfg, err := model.ParseConfig([]byte(tinyConfig), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.NewRandom(testDevice, cfg, gpu.F32, 32, 7)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Release)
	set, err := lora.NewSet(m, lora.Config{Rank: 4, Alpha: 8, Targets: model.Projections}, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Release)
	set.Attach(m)
	rng := rand.New(rand.NewPCG(5, 5))
	for _, k := range set.Keys() {
		l := set.Adapters[k]
		a := gputest.RandFloats(rng, l.Rank()*l.In())
		b := gputest.RandFloats(rng, l.Out()*l.Rank())
		for i := range b {
			b[i] *= 0.1
		}
		if err := l.SetWeights(a, b); err != nil {
			t.Fatal(err)
		}
	}
	return m, set
}

// randomRows makes n right-padded rows of seq tokens with a masked prompt of
// varying length, so that rows hold different numbers of loss targets.
func randomRows(rng *rand.Rand, n, seq, vocab int) [][3][]int32 {
	rows := make([][3][]int32, n)
	for r := range rows {
		length := seq - rng.IntN(seq/2)
		prompt := 1 + rng.IntN(length/2)
		ids, mask, labels := make([]int32, seq), make([]int32, seq), make([]int32, seq)
		for i := range seq {
			labels[i] = model.IgnoreLabel
			if i >= length {
				continue
			}
			ids[i], mask[i] = int32(rng.IntN(vocab)), 1
			if i >= prompt {
				labels[i] = ids[i]
			}
		}
		rows[r] = [3][]int32{ids, mask, labels}
	}
	return rows
}

func batchOf(rows [][3][]int32, seq int) model.Batch {
	b := model.Batch{Rows: len(rows), Seq: seq}
	for _, r := range rows {
		b.InputIDs = append(b.InputIDs, r[0]...)
		b.Mask = append(b.Mask, r[1]...)
		b.Labels = append(b.Labels, r[2]...)
	}
	return b
}

// snapshot downloads every parameter and gradient.
func snapshot(t *testing.T, set *lora.Set) (values, grads [][]float32) {
	t.Helper()
	for _, p := range set.Params() {
		values = append(values, gputest.Download(t, p.Value))
		grads = append(grads, gputest.Download(t, p.Grad))
	}
	return values, grads
}

func restore(t *testing.T, set *lora.Set, values [][]float32) {
	t.Helper()
	for i, p := range set.Params() {
		if err := p.Value.Upload(values[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// maxRelDiff is the largest |a-b| / max(|b|) over the tensors.
func maxRelDiff(a, b [][]float32) float64 {
	worst := 0.0
	for i := range a {
		scale := 0.0
		for _, v := range b[i] {
			scale = max(scale, math.Abs(float64(v)))
		}
		for j := range a[i] {
			d := math.Abs(float64(a[i][j]) - float64(b[i][j]))
			if scale > 0 {
				d /= scale
			}
			if math.IsNaN(d) {
				return math.Inf(1)
			}
			worst = max(worst, d)
		}
	}
	return worst
}

// stepWith runs one optimizer step over the rows split into micro-batches of
// rowsPer rows, from the given parameter values, and returns the loss, the
// gradients and the parameters after the update.
func stepWith(t *testing.T, m *model.Model, set *lora.Set, start [][]float32, rows [][3][]int32, seq, rowsPer int) (float64, [][]float32, [][]float32) {
	t.Helper()
	restore(t, set, start)
	cfg := optim.DefaultAdamWConfig()
	cfg.MaxGradNorm = 0.5 // clipping applies: the norm must be that of the whole step
	opt, err := optim.NewOptimizer(testDevice, set.Params(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer opt.Release()
	ws, err := m.NewWorkspace(rowsPer, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	tr, err := assemble(m, set, opt, ws, optim.Schedule{Kind: optim.ScheduleConstant, BaseRate: 1e-2})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Release()
	var micro []model.Batch
	for i := 0; i < len(rows); i += rowsPer {
		micro = append(micro, batchOf(rows[i:i+rowsPer], seq))
	}
	if err := tr.Step(micro, nil); err != nil {
		t.Fatal(err)
	}
	stats, err := tr.ReadStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	values, grads := snapshot(t, set)
	return stats.Loss, grads, values
}

// TestAccumulationEqualsOneBatch checks that k micro-batches recorded into one
// submission give the loss, gradients and update of one batch of the same
// examples: each micro-batch computes on its own tokens and the loss divides
// by the step's total target count.
func TestAccumulationEqualsOneBatch(t *testing.T) {
	m, set := tinyModel(t)
	start, _ := snapshot(t, set)
	const seq = 11
	rows := randomRows(rand.New(rand.NewPCG(1, 2)), 4, seq, m.Config.VocabSize)
	loss1, grads1, after1 := stepWith(t, m, set, start, rows, seq, 4)
	for _, per := range []int{2, 1} {
		loss, grads, after := stepWith(t, m, set, start, rows, seq, per)
		if d := math.Abs(loss-loss1) / loss1; d > 1e-6 {
			t.Errorf("%d micro-batches: loss %g, one batch %g (relative difference %.2g)", 4/per, loss, loss1, d)
		}
		if d := maxRelDiff(grads, grads1); d > 1e-6 {
			t.Errorf("%d micro-batches: gradients differ from one batch by %.2g (relative to each tensor's largest)", 4/per, d)
		}
		if d := maxRelDiff(after, after1); d > 1e-6 {
			t.Errorf("%d micro-batches: updated parameters differ from one batch by %.2g", 4/per, d)
		}
	}
	if d := maxRelDiff(after1, start); d == 0 {
		t.Error("the step changed no parameter")
	}
}

// TestOtherWorkspaceLeavesTrainingIntact runs a forward on another batch in an
// evaluation workspace between a training forward and its backward: the
// gradients must equal those without it.
func TestOtherWorkspaceLeavesTrainingIntact(t *testing.T) {
	m, set := tinyModel(t)
	const seq = 9
	rng := rand.New(rand.NewPCG(3, 4))
	train := batchOf(randomRows(rng, 2, seq, m.Config.VocabSize), seq)
	other := batchOf(randomRows(rng, 3, seq, m.Config.VocabSize), seq)
	ws, err := m.NewWorkspace(2, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	evalWS, err := m.NewWorkspace(3, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer evalWS.Release()
	run := func(interleave bool) [][]float32 {
		rec := testDevice.NewRecorder()
		defer rec.Release()
		if err := set.ZeroGrad(rec); err != nil {
			t.Fatal(err)
		}
		if err := ws.Load(m, train); err != nil {
			t.Fatal(err)
		}
		if err := m.Forward(rec, ws, nil); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		if interleave {
			if err := evalWS.Load(m, other); err != nil {
				t.Fatal(err)
			}
			if err := m.Forward(rec, evalWS, nil); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
		}
		if err := m.Backward(rec, ws); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		_, grads := snapshot(t, set)
		return grads
	}
	clean, mixed := run(false), run(true)
	if d := maxRelDiff(mixed, clean); d != 0 {
		t.Errorf("a forward in another workspace changed the training gradients by %.2g", d)
	}
}
