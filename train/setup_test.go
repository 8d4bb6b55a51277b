package train

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
)

// New builds the selector when a step of the schedule runs sparse, and
// SelectorAt hands it out from the table's start step on only.
func TestNewBuildsTheSelectorForSparseSteps(t *testing.T) {
	cfg, err := model.ParseConfig([]byte(tinyConfig), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	table := &predictor.SparsityConfig{Layers: map[int]predictor.LayerSparsity{1: {MLP: 0.5, Attention: 0.5}}, Rank: 2, StartStep: 0.5}
	settings := func(total int) Settings {
		return Settings{
			Model:    ModelSource{Random: cfg, MaxSeq: 16, Seed: 1, DType: gpu.F32},
			Params:   ParamSource{LoRA: lora.Config{Rank: 2, Alpha: 4, Targets: model.Projections}, Seed: 2},
			AdamW:    optim.DefaultAdamWConfig(),
			Schedule: optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: total, BaseRate: 1e-3},
			Rows:     2, Seq: 8,
			Sparsity: table,
			Estimate: predictor.EstimateOptions{NoCache: true},
		}
	}
	ctx := context.Background()
	tr, err := New(ctx, testDevice, settings(4))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Release()
	if tr.Selector == nil || tr.Estimator == nil || tr.Adapters == nil || tr.Full != nil {
		t.Fatalf("selector %v, estimator %v, adapters %v, full %v", tr.Selector, tr.Estimator, tr.Adapters, tr.Full)
	}
	for step, sparse := range []bool{false, false, true, true} {
		if got := tr.SelectorAt(step) != nil; got != sparse {
			t.Errorf("step %d: sparse %t, want %t", step, got, sparse)
		}
	}
	b := batchOf(randomRows(rand.New(rand.NewPCG(7, 8)), 2, 8, cfg.VocabSize), 8)
	for step := range 4 {
		if err := tr.Step([]model.Batch{b}, tr.SelectorAt(step)); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	if st, err := tr.ReadStats(ctx); err != nil || st.Steps != 4 {
		t.Fatalf("stats %+v, %v", st, err)
	}

	// A run that ends inside the dense warm-up needs no SVD.
	short, err := New(ctx, testDevice, settings(1))
	if err != nil {
		t.Fatal(err)
	}
	defer short.Release()
	if short.Selector != nil || short.Estimator != nil || short.SelectorAt(0) != nil {
		t.Errorf("a run of one step (start step 1) built the predictor")
	}

	// Full-parameter training runs dense: a sparse table is refused.
	full := settings(4)
	full.Params = ParamSource{Full: true}
	if _, err := New(ctx, testDevice, full); err == nil || !strings.Contains(err.Error(), "dense") {
		t.Errorf("full training with a sparse table: %v, want a refusal", err)
	}
}
