package train

import (
	"fmt"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
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
		measured := measureStepPeak(t, cfg, Settings{
			Model:  ModelSource{Random: cfg, MaxSeq: cfg.MaxPositionEmbeddings, Seed: 7, DType: gpu.F32},
			Params: ParamSource{Full: c.full, LoRA: lora.Config{Rank: rank, Alpha: 8, Targets: model.Projections}, Seed: 3},
			Rows:   rows, Seq: seq,
		}, c.gradAccum, func(tr *Trainer) {
			if host := tr.Model.HostEmbed != nil; host == c.full {
				t.Errorf("full %t: the embedding table in host memory: %t", c.full, host)
			}
		})
		checkPlan(t, fmt.Sprintf("full %t, grad-accum %d", c.full, c.gradAccum), measured, PlanMemory(cfg, MemorySettings{Rows: rows, Seq: seq,
			GradAccum: c.gradAccum, WeightDType: gpu.F32, Full: c.full, Rank: rank, Targets: model.Projections, Limits: testDevice.Limits}))
	}
}
