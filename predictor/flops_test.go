package predictor

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model"
)

// tinyConfig is one small layer whose FLOPs are easy to count by hand:
// hidden 8, intermediate 16, 2 query heads sharing 1 kv head of dim 4.
func tinyConfig() *model.Config {
	return &model.Config{
		Path: "tiny", Architecture: model.ArchLlama,
		VocabSize: 10, HiddenSize: 8, IntermediateSize: 16, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 1, HeadDim: 4,
	}
}

func mustParseSparsity(t *testing.T, text string) *SparsityConfig {
	t.Helper()
	cfg, err := ParseSparsityConfig([]byte(text), t.Name()+".yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestStepFLOPsTinyByHand(t *testing.T) {
	// 2 rows of 4 real tokens (seq 5, one pad each): 2 context then 2 scored
	// tokens per row. LoRA r=2 on q_proj and down_proj. Half the channels
	// dropped in the MLP and the attention, SVD rank 2.
	shape := StepShape{Rows: 2, Seq: 5, RealTokens: 8, ContextTokens: 4, ScoredTokens: 4}
	lora := LoRATargets{Rank: 2, Targets: []model.Projection{model.ProjQ, model.ProjDown}}
	sparsity := mustParseSparsity(t, "mode: svd_2\nskip_output_tokens: true\nsparsity:\n  layers.0.mlp: 0.5\n  layers.0.self_attn: 0.5\n")

	report, err := StepFLOPs(tinyConfig(), shape, lora, sparsity)
	if err != nil {
		t.Fatal(err)
	}

	// Dense, T = 8 real tokens, P = 10 positions; each frozen projection
	// 4*T*in*out.
	// q 8->8, k 8->4, v 8->4, o 8->8: 4*8*(64+32+32+64) = 6144.
	// gate, up 8->16, down 16->8: 4*8*3*128 = 12288.
	// Attention: 4 tokens per row give 4*5/2 = 10 causal pairs, 20 in all;
	// 18 matmul-FLOPs per pair and query-channel (forward 4, dq pass 6, dk/dv
	// pass 8): 18 * (2 heads * 4) * 20 = 2880.
	// LoRA 6*T*r*(in+out) on the real tokens: q 6*8*2*16 = 1536, down
	// 6*8*2*24 = 2304: 3840.
	dense := FLOPBreakdown{AttentionProjections: 6144, MLPProjections: 12288, AttentionCore: 2880, LoRA: 3840}
	const lmHead = 6 * 4 * 8 * 10 // logits, recomputed logits and dh over the 4 scored tokens, hidden 8, vocab 10

	// Sparse: 4 context tokens take the sparse path, 4 scored tokens run dense.
	// Attention keeps k = floor(4*0.5) = 2 kv channels: q keeps 2*2 = 4, k 2,
	// v 2, o reads 4. Projections: 4*8*(4*(8+4+4+8) + 4*(4+2+2+4)) = 4608.
	// MLP keeps floor(16*0.5) = 8: 4*8*(4*3*16 + 4*3*8) = 9216.
	// Attention core: the kernels run every channel: 2880.
	// Predictor, rank 2: q, k, v on all 10 positions: 2*10*2*(8+8) +
	// 2*(2*10*2*(8+4)) = 640 + 960 = 1600, of which the B products (8, 4, 4
	// outputs) run in the selection kernels: 2*10*2*16 = 640; gate and up on 2
	// row means, all in the kernels: 2*(2*2*2*(8+16)) = 384.
	sparse := FLOPBreakdown{AttentionProjections: 4608, MLPProjections: 9216, AttentionCore: 2880, LoRA: 3840,
		Predictor: 1984, PredictorKernels: 1024}

	if len(report.Layers) != 1 {
		t.Fatalf("%d layer rows, want 1", len(report.Layers))
	}
	row := report.Layers[0]
	if row.DenseParts != dense || row.Dense != 25152 {
		t.Errorf("dense parts %+v total %g, want %+v total 25152", row.DenseParts, row.Dense, dense)
	}
	if row.SparseParts != sparse || row.Sparse != 22528 {
		t.Errorf("sparse parts %+v total %g, want %+v total 22528", row.SparseParts, row.Sparse, sparse)
	}
	if row.Sparsity != (LayerSparsity{MLP: 0.5, Attention: 0.5}) {
		t.Errorf("layer sparsity %+v", row.Sparsity)
	}
	if report.LMHead != lmHead || report.Dense != 25152+lmHead || report.Sparse != 22528+lmHead {
		t.Errorf("LM head %g, totals %g / %g; want %d, %d / %d", report.LMHead, report.Dense, report.Sparse, lmHead, 25152+lmHead, 22528+lmHead)
	}
	if want := float64(22528+lmHead) / float64(25152+lmHead); math.Abs(report.Ratio-want) > 1e-15 {
		t.Errorf("ratio %g, want %g", report.Ratio, want)
	}
}

// With skip_output_tokens false the scored tokens take the sparse path too.
func TestStepFLOPsTinyAllTokensSparse(t *testing.T) {
	shape := StepShape{Rows: 2, Seq: 4, RealTokens: 8, ContextTokens: 4, ScoredTokens: 4}
	lora := LoRATargets{Rank: 2, Targets: []model.Projection{model.ProjV}}
	sparsity := mustParseSparsity(t, "mode: svd_2\nskip_output_tokens: false\nsparsity:\n  layers.0.self_attn: 0.5\n")
	report, err := StepFLOPs(tinyConfig(), shape, lora, sparsity)
	if err != nil {
		t.Fatal(err)
	}
	// All 8 tokens keep q 4, k 2, v 2, o 4: 4*8*8*12 = 3072. The core runs
	// every channel on its 20 pairs: 18*8*20 = 2880. The MLP stays dense
	// (12288); LoRA on v: 6*8*2*(8+4) = 1152; predictor for q, k, v only:
	// 2*8*2*(8+8) + 2*(2*8*2*(8+4)) = 1280, of which 2*8*2*(8+4+4) = 512 in
	// the selection kernels.
	want := FLOPBreakdown{AttentionProjections: 3072, AttentionCore: 2880, MLPProjections: 12288, LoRA: 1152, Predictor: 1280, PredictorKernels: 512}
	if got := report.Layers[0].SparseParts; got != want {
		t.Errorf("sparse parts %+v, want %+v", got, want)
	}
}

func TestStepFLOPsZeroSparsityEqualsDense(t *testing.T) {
	cfg := llamaShapedConfig(4)
	shape := StepShape{Rows: 4, Seq: 512, RealTokens: 1900, ContextTokens: 1400, ScoredTokens: 500}
	lora := LoRATargets{Rank: 16, Targets: model.Projections}
	dense, err := BuiltinSparsityConfig("dense")
	if err != nil {
		t.Fatal(err)
	}
	zeros := mustParseSparsity(t, "mode: svd_8\nskip_output_tokens: true\nsparsity:\n  layers.0.mlp: 0\n  layers.3.self_attn: 0\n")
	for name, sparsity := range map[string]*SparsityConfig{"nil": nil, "dense.yaml": dense, "svd_8 with zeros": zeros} {
		report, err := StepFLOPs(cfg, shape, lora, sparsity)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if report.Dense != report.Sparse || report.Ratio != 1 || report.Dense <= 0 {
			t.Errorf("%s: dense %g sparse %g ratio %g, want equal", name, report.Dense, report.Sparse, report.Ratio)
		}
		for _, l := range report.Layers {
			if l.DenseParts != l.SparseParts || l.DenseParts.Predictor != 0 {
				t.Errorf("%s: layer %d parts differ: %+v vs %+v", name, l.Layer, l.DenseParts, l.SparseParts)
			}
		}
	}
}

func TestStepFLOPsDecreaseWithSparsity(t *testing.T) {
	cfg := llamaShapedConfig(2)
	shape := StepShape{Rows: 4, Seq: 512, RealTokens: 2048, ContextTokens: 1536, ScoredTokens: 512}
	lora := LoRATargets{Rank: 32, Targets: []model.Projection{model.ProjQ, model.ProjK, model.ProjV, model.ProjO}}
	for _, kind := range []string{"mlp", "self_attn"} {
		previous := math.Inf(1)
		for _, s := range []string{"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.99"} {
			sparsity := mustParseSparsity(t, "mode: svd_8\nskip_output_tokens: true\nsparsity:\n  layers.0."+kind+": "+s+"\n  layers.1."+kind+": "+s+"\n")
			report, err := StepFLOPs(cfg, shape, lora, sparsity)
			if err != nil {
				t.Fatal(err)
			}
			if !(report.Sparse < previous) || !(report.Sparse < report.Dense) {
				t.Errorf("%s sparsity %s: sparse %g, not below the previous %g and the dense %g", kind, s, report.Sparse, previous, report.Dense)
			}
			previous = report.Sparse
		}
	}
}

// The paper's speed workload: LLaMA-3-8B shapes, LoRA r=32 on q, k, v, o,
// batch 8 x 512 tokens of which 128 per row are output tokens, the Math10K
// table. The paper reports 46 % of LoRA's FLOPs; this model counts slightly
// differently, so only the range is asserted.
func TestStepFLOPsPaperWorkload(t *testing.T) {
	sparsity, err := BuiltinSparsityConfig("llama3-8b-math10k")
	if err != nil {
		t.Fatal(err)
	}
	const rows, seq, outputs = 8, 512, 128
	shape := StepShape{Rows: rows, Seq: seq, RealTokens: rows * seq, ContextTokens: rows * (seq - outputs), ScoredTokens: rows * outputs}
	lora := LoRATargets{Rank: 32, Targets: []model.Projection{model.ProjQ, model.ProjK, model.ProjV, model.ProjO}}
	report, err := StepFLOPs(llamaShapedConfig(32), shape, lora, sparsity)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := report.Table(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("LLaMA-3-8B, Math10K table, batch 8 x 512 (128 output tokens), LoRA r=32 on q,k,v,o:\n%s", table.String())
	t.Logf("sparse/dense FLOPs = %.4f (paper: 0.46); dense %.1f TFLOP, sparse %.1f TFLOP per step", report.Ratio, report.Dense/1e12, report.Sparse/1e12)
	if report.Ratio < 0.3 || report.Ratio > 0.7 {
		t.Errorf("sparse/dense = %.3f, want within [0.3, 0.7] around the paper's 0.46", report.Ratio)
	}
}

func TestStepFLOPsTable(t *testing.T) {
	sparsity := mustParseSparsity(t, "mode: svd_2\nsparsity:\n  layers.0.mlp: 0.5\n")
	report, err := StepFLOPs(tinyConfig(), StepShape{Rows: 1, Seq: 4, RealTokens: 4, ContextTokens: 3, ScoredTokens: 1}, LoRATargets{}, sparsity)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := report.Table(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "sparse/dense") ||
		!strings.HasPrefix(strings.TrimSpace(lines[2]), "lm_head") || !strings.HasPrefix(strings.TrimSpace(lines[3]), "total") {
		t.Errorf("table:\n%s", out.String())
	}
}

func TestStepFLOPsRejectsBadInputs(t *testing.T) {
	good := StepShape{Rows: 1, Seq: 4, RealTokens: 4, ContextTokens: 3, ScoredTokens: 1}
	tooDeep := mustParseSparsity(t, "mode: svd_2\nsparsity:\n  layers.5.mlp: 0.5\n")
	noHeads := tinyConfig()
	noHeads.NumKeyValueHeads = 0
	cases := []struct {
		name     string
		cfg      *model.Config
		shape    StepShape
		lora     LoRATargets
		sparsity *SparsityConfig
		want     string
	}{
		{"nil config", nil, good, LoRATargets{}, nil, "no model config"},
		{"zero kv heads", noHeads, good, LoRATargets{}, nil, "num_key_value_heads"},
		{"no rows", tinyConfig(), StepShape{Seq: 4}, LoRATargets{}, nil, "Rows and Seq"},
		{"more real than slots", tinyConfig(), StepShape{Rows: 1, Seq: 4, RealTokens: 5, ContextTokens: 5}, LoRATargets{}, nil, "RealTokens"},
		{"roles do not add up", tinyConfig(), StepShape{Rows: 1, Seq: 4, RealTokens: 4, ContextTokens: 1, ScoredTokens: 1}, LoRATargets{}, nil, "sum to RealTokens"},
		{"rank 0 with targets", tinyConfig(), good, LoRATargets{Targets: []model.Projection{model.ProjQ}}, nil, "rank"},
		{"bad projection", tinyConfig(), good, LoRATargets{Rank: 2, Targets: []model.Projection{model.Projection(9)}}, nil, "not a projection"},
		{"duplicate target", tinyConfig(), good, LoRATargets{Rank: 2, Targets: []model.Projection{model.ProjQ, model.ProjQ}}, nil, "twice"},
		{"layer beyond model", tinyConfig(), good, LoRATargets{}, tooDeep, "layer 5"},
	}
	for _, c := range cases {
		if _, err := StepFLOPs(c.cfg, c.shape, c.lora, c.sparsity); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// BatchShape counts the causal pairs of each row, and StepFLOPs uses them: a
// batch of rows 3 and 0 tokens long has 6 pairs, not the 2*1.5*2.5/2 = 3.75 of
// rows alike.
func TestBatchShapeCountsCausalPairsPerRow(t *testing.T) {
	b := model.Batch{Rows: 2, Seq: 4, InputIDs: make([]int32, 8),
		Mask: []int32{1, 1, 1, 0, 0, 0, 0, 0}, Labels: []int32{-100, 1, 2, -100, -100, -100, -100, -100}}
	shape, err := BatchShape(b, 10)
	if err != nil {
		t.Fatal(err)
	}
	if shape.CausalPairs != 6 || shape.RealTokens != 3 {
		t.Fatalf("shape %+v, want 6 causal pairs of 3 real tokens", shape)
	}
	report, err := StepFLOPs(tinyConfig(), shape, LoRATargets{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tinyConfig()
	if want := 18.0 * float64(cfg.NumAttentionHeads*cfg.HeadDim) * 6; report.Layers[0].DenseParts.AttentionCore != want {
		t.Errorf("attention core %g, want %g", report.Layers[0].DenseParts.AttentionCore, want)
	}
	shape.CausalPairs = 2 // fewer than the real tokens: impossible
	if _, err := StepFLOPs(tinyConfig(), shape, LoRATargets{}, nil); err == nil {
		t.Error("CausalPairs below RealTokens accepted")
	}
}
