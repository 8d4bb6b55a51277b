package train

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// TestMemoryPlanEmbeddingTable compares the plan with the measured peak
// where the embedding table's place changes it: a LoRA run with an untied
// head keeps the table in host memory (and submits one micro-batch at a
// time: three here), full training keeps it on the GPU. The table is a
// quarter of the LoRA run's memory here, so the plan's 10 % (as in
// TestMemoryPlanMatchesMeasuredPeak: the recorder's buffers are estimated)
// tells whether it is counted; and the LoRA run must hold it on the host.
func TestMemoryPlanEmbeddingTable(t *testing.T) {
	const raw = `{"model_type": "llama", "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 160,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
		"max_position_embeddings": 32, "rope_theta": 10000.0, "tie_word_embeddings": false}`
	cfg, err := model.ParseConfig([]byte(raw), "plan test")
	if err != nil {
		t.Fatal(err)
	}
	const rows, seq, rank = 2, 16, 4
	for _, c := range []struct {
		full      bool
		gradAccum int
	}{{false, 3}, {false, 1}, {true, 1}} {
		base := testDevice.LiveBytes()
		testDevice.ResetPeakBytes()
		func() {
			tr, err := New(context.Background(), testDevice, Settings{
				Model:    ModelSource{Random: cfg, MaxSeq: cfg.MaxPositionEmbeddings, Seed: 7, DType: gpu.F32},
				Params:   ParamSource{Full: c.full, LoRA: lora.Config{Rank: rank, Alpha: 8, Targets: model.Projections}, Seed: 3},
				AdamW:    optim.DefaultAdamWConfig(),
				Schedule: optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 1, BaseRate: 1e-3},
				Rows:     rows, Seq: seq,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Release()
			if host := tr.Model.HostEmbed != nil; host == c.full {
				t.Errorf("full %t: the embedding table in host memory: %t", c.full, host)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			var micro []model.Batch
			for range c.gradAccum {
				micro = append(micro, batchOf(randomRows(rng, rows, seq, cfg.VocabSize), seq))
			}
			if err := tr.Step(micro, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := tr.ReadStats(context.Background()); err != nil {
				t.Fatal(err)
			}
		}()
		measured := testDevice.PeakBytes() - base
		plan := PlanMemory(cfg, MemorySettings{Rows: rows, Seq: seq, GradAccum: c.gradAccum, WeightDType: gpu.F32, Full: c.full,
			Rank: rank, Targets: model.Projections, Limits: testDevice.Limits})
		d := float64(measured)/float64(plan.PeakBytes) - 1
		t.Logf("full %t, grad-accum %d: planned %d bytes, measured %d (%+.2f %%)", c.full, c.gradAccum, plan.PeakBytes, measured, 100*d)
		if math.Abs(d) > 0.10 {
			t.Errorf("full %t, grad-accum %d: planned peak %d bytes, measured %d (%+.2f %%); parts %+v", c.full, c.gradAccum, plan.PeakBytes, measured, 100*d, plan.Parts)
		}
	}
}
