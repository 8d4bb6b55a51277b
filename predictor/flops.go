// This file counts the matmul FLOPs of one LoRA training step, dense and under
// a sparsity table (SPEC 4.5, 6: count FLOPs before timing anything), so a
// benchmark can report useful TFLOP/s and the paper's "% of LoRA's FLOPs". It
// counts what the model executes (bench step checks the count against the
// GEMMs and attention dispatches a step records), recomputation included.
//
// The model, per decoder layer, with T real tokens (padding is never
// computed by the frozen projections or the LM head), P = Rows*Seq positions,
// and a matmul of [m,k] x [k,n] counted as 2 m n k:
//
//   - Frozen projections q, k, v, o, gate, up, down: forward x W^T and the
//     activation gradient dY W (2 + 2 = 4 T in out). Frozen weights get no
//     weight gradient. The input gradient of layer 0 into the frozen embedding
//     is counted too, as the trainer computes it.
//   - Attention core: causal (query, key) pairs of each row, n (n+1) / 2 for
//     a row of n real tokens, summed over the rows (StepShape.CausalPairs, as
//     BatchShape counts them: the rows of a partial micro-batch, or of
//     examples of different lengths, are not alike); for a shape without
//     them, rows assumed to hold T/Rows real tokens each, pairs = Rows L
//     (L+1) / 2 with L = T/Rows.
//     Per pair and query head, 2 head_dim FLOPs for each of: QK^T and PV
//     (forward); QK^T again, dP = dO V^T and dQ = dS K (the dq pass); QK^T,
//     dP, dV = P^T dO and dK = dS^T Q (the dk/dv pass): 18 H head_dim pairs in
//     all (the backward recomputes the scores; softmax and RoPE not counted).
//     The kernels run every channel, in sparse layers too.
//   - LoRA on each target with rank r: x A^T, (x A^T) B^T forward; dB, dz = dY B,
//     dA and the input gradient dz A backward: 6 T r (in + out). The adapters
//     run on the real tokens (padding costs nothing), dense in sparse steps too
//     (SPEC 4.5).
//   - LM head (not per layer): on the scored tokens S only (their logits are
//     the only ones the loss needs): logits forward, logits recomputed in
//     backward, and dh: 6 S hidden vocab.
//
// A sparse step (SPEC 4.5) changes layers whose sparsity is > 0, on the
// sparse-path tokens only: the context tokens, or every real token when the
// table sets skip_output_tokens false (then scored tokens run sparse too).
// With k kept kv channels out of KV head_dim and G = H/KV:
//
//   - q keeps G k output channels, k and v keep k, o reads G k input channels;
//     gate and up keep k_ffn outputs, down reads k_ffn inputs; forward and
//     activation gradient alike (SPEC 4.6). Other tokens run dense.
//   - Predictor (SVD estimator of rank r, SPEC 4.2, 4.3): for a sparse FFN,
//     xbar A B for gate and up on one mean vector per row: 2 Rows r (hidden +
//     intermediate) each, in the selection kernels; for sparse attention,
//     x A for q, k and v on every position (GEMMs, 2 P r hidden each) and its
//     product with B inside the column-norm kernel (2 P r out each). Means,
//     norms, SiLU and top-k are not matmuls and not counted.

package predictor

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"

	"github.com/sparselora/sparselora/model"
)

// StepShape is the token layout of one training step.
type StepShape struct {
	// Rows is the batch size and Seq the padded sequence length.
	Rows, Seq int
	// RealTokens have attention_mask 1; ContextTokens are real and not scored;
	// ScoredTokens' next-token predictions enter the loss. Context + Scored =
	// Real.
	RealTokens, ContextTokens, ScoredTokens int
	// CausalPairs is the (query, key) pairs causal attention computes: the
	// sum over rows of n (n+1) / 2 for a row's n real tokens. 0 takes the
	// real tokens as spread evenly over the rows.
	CausalPairs int
}

// BatchShape counts a batch's real, context and scored tokens for StepFLOPs
// (scored as model.Targets decides).
func BatchShape(b model.Batch, vocab int) (StepShape, error) {
	targets, _, err := model.Targets(b.Labels, b.Rows, b.Seq, vocab)
	if err != nil {
		return StepShape{}, err
	}
	shape := StepShape{Rows: b.Rows, Seq: b.Seq}
	for r := range b.Rows {
		n := 0
		for _, m := range b.Mask[r*b.Seq : (r+1)*b.Seq] {
			n += int(m)
		}
		shape.CausalPairs += n * (n + 1) / 2
	}
	for i, m := range b.Mask {
		if m == 0 {
			continue
		}
		shape.RealTokens++
		if targets[i] != model.NoTarget {
			shape.ScoredTokens++
		} else {
			shape.ContextTokens++
		}
	}
	return shape, nil
}

// LoRATargets describes the adapters: one of rank Rank on each listed
// projection of every layer.
type LoRATargets struct {
	Rank    int
	Targets []model.Projection
}

// FLOPBreakdown splits the matmul FLOPs of one layer in one step.
type FLOPBreakdown struct {
	// AttentionProjections is frozen q, k, v, o: forward and activation gradient.
	AttentionProjections float64
	// AttentionCore is QK^T, PV and their gradients.
	AttentionCore float64
	// MLPProjections is frozen gate, up, down: forward and activation gradient.
	MLPProjections float64
	// LoRA is the adapters' forward, parameter gradients and input gradient.
	LoRA float64
	// Predictor is the SVD estimator's scoring; zero in dense steps.
	Predictor float64
	// PredictorKernels is the part of Predictor that runs in the selection
	// kernels rather than as GEMMs.
	PredictorKernels float64
}

// Total sums the parts.
func (b FLOPBreakdown) Total() float64 {
	return b.AttentionProjections + b.AttentionCore + b.MLPProjections + b.LoRA + b.Predictor
}

// LayerFLOPs is one decoder layer's matmul FLOPs in a dense and in a sparse
// step.
type LayerFLOPs struct {
	Layer int
	// Sparsity is what the sparse step applied (zero for a dense layer).
	Sparsity LayerSparsity
	// Dense and Sparse are the totals of DenseParts and SparseParts.
	Dense, Sparse           float64
	DenseParts, SparseParts FLOPBreakdown
}

// FLOPReport is the analytic FLOP count of one training step.
type FLOPReport struct {
	Shape  StepShape
	Layers []LayerFLOPs
	// LMHead is the logits forward, their recomputation and dh backward on the
	// scored tokens, the same in both steps.
	LMHead float64
	// Dense and Sparse are whole-step totals (layers and LM head); Ratio is
	// Sparse / Dense.
	Dense, Sparse, Ratio float64
}

// StepFLOPs counts the forward+backward matmul FLOPs of one LoRA training step
// on cfg's architecture, dense and with the sparsity table applied (a step
// after the warm-up); see the file comment for the exact model. A nil or dense
// sparsity gives equal dense and sparse counts.
func StepFLOPs(cfg *model.Config, shape StepShape, lora LoRATargets, sparsity *SparsityConfig) (FLOPReport, error) {
	if err := checkFLOPInputs(cfg, shape, lora, sparsity); err != nil {
		return FLOPReport{}, err
	}
	d := newLayerDims(cfg, shape, lora)
	sparsePathTokens := float64(shape.ContextTokens)
	if sparsity != nil && !sparsity.SkipOutputTokens {
		sparsePathTokens = float64(shape.RealTokens)
	}

	report := FLOPReport{Shape: shape, Layers: make([]LayerFLOPs, cfg.NumHiddenLayers)}
	for layer := range cfg.NumHiddenLayers {
		row := LayerFLOPs{Layer: layer, DenseParts: d.denseParts()}
		row.SparseParts = row.DenseParts
		if sparsity != nil && !sparsity.Dense {
			row.Sparsity = sparsity.Layer(layer)
			row.SparseParts = d.sparseParts(row.Sparsity, sparsity.Rank, sparsePathTokens)
		}
		row.Dense, row.Sparse = row.DenseParts.Total(), row.SparseParts.Total()
		report.Layers[layer] = row
		report.Dense += row.Dense
		report.Sparse += row.Sparse
	}
	report.LMHead = 6 * float64(shape.ScoredTokens) * d.hidden * float64(cfg.VocabSize)
	report.Dense += report.LMHead
	report.Sparse += report.LMHead
	report.Ratio = report.Sparse / report.Dense
	return report, nil
}

func checkFLOPInputs(cfg *model.Config, shape StepShape, lora LoRATargets, sparsity *SparsityConfig) error {
	const op = "predictor: step FLOPs"
	if cfg == nil {
		return fmt.Errorf("%s: no model config", op)
	}
	for _, size := range []struct {
		name  string
		value int
	}{
		{"hidden_size", cfg.HiddenSize}, {"intermediate_size", cfg.IntermediateSize},
		{"num_hidden_layers", cfg.NumHiddenLayers}, {"num_attention_heads", cfg.NumAttentionHeads},
		{"num_key_value_heads", cfg.NumKeyValueHeads}, {"head_dim", cfg.HeadDim}, {"vocab_size", cfg.VocabSize},
	} {
		if size.value <= 0 {
			return fmt.Errorf("%s: model %s: %s must be positive, got %d", op, modelName(cfg), size.name, size.value)
		}
	}
	if cfg.NumAttentionHeads%cfg.NumKeyValueHeads != 0 {
		return fmt.Errorf("%s: model %s: %d key/value heads do not divide %d attention heads", op, modelName(cfg), cfg.NumKeyValueHeads, cfg.NumAttentionHeads)
	}
	switch {
	case shape.Rows <= 0 || shape.Seq <= 0:
		return fmt.Errorf("%s: shape %+v: Rows and Seq must be positive", op, shape)
	case shape.RealTokens <= 0 || shape.RealTokens > shape.Rows*shape.Seq:
		return fmt.Errorf("%s: shape %+v: RealTokens must be in [1, Rows*Seq = %d]", op, shape, shape.Rows*shape.Seq)
	case shape.ContextTokens < 0 || shape.ScoredTokens < 0 || shape.ContextTokens+shape.ScoredTokens != shape.RealTokens:
		return fmt.Errorf("%s: shape %+v: ContextTokens and ScoredTokens must be non-negative and sum to RealTokens", op, shape)
	case shape.CausalPairs < 0 || (shape.CausalPairs > 0 && shape.CausalPairs < shape.RealTokens):
		return fmt.Errorf("%s: shape %+v: CausalPairs must be 0 (rows alike) or at least RealTokens", op, shape)
	}
	if lora.Rank < 0 || (lora.Rank == 0 && len(lora.Targets) > 0) {
		return fmt.Errorf("%s: LoRA rank must be positive with targets %v, got %d", op, lora.Targets, lora.Rank)
	}
	for i, p := range lora.Targets {
		if !slices.Contains(model.Projections, p) {
			return fmt.Errorf("%s: LoRA target %d is not a projection (%d)", op, i, int(p))
		}
		if slices.Contains(lora.Targets[:i], p) {
			return fmt.Errorf("%s: LoRA target %s listed twice", op, p)
		}
	}
	if sparsity != nil {
		if err := sparsity.Validate(cfg); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

// layerDims holds one layer's sizes and the step's token counts as float64,
// so products of large sizes cannot overflow.
type layerDims struct {
	hidden, intermediate float64
	heads, headDim       float64
	qDim, kvDim, group   float64
	rows, tokens         float64
	positions            float64 // Rows*Seq
	pairs                float64 // causal (query, key) pairs of all rows
	loraRank             float64
	lora                 []model.Projection
}

func newLayerDims(cfg *model.Config, shape StepShape, lora LoRATargets) layerDims {
	pairs := float64(shape.CausalPairs)
	if pairs == 0 {
		perRow := float64(shape.RealTokens) / float64(shape.Rows)
		pairs = float64(shape.Rows) * perRow * (perRow + 1) / 2
	}
	return layerDims{
		pairs:        pairs,
		hidden:       float64(cfg.HiddenSize),
		intermediate: float64(cfg.IntermediateSize),
		heads:        float64(cfg.NumAttentionHeads),
		headDim:      float64(cfg.HeadDim),
		qDim:         float64(cfg.NumAttentionHeads * cfg.HeadDim),
		kvDim:        float64(cfg.NumKeyValueHeads * cfg.HeadDim),
		group:        float64(cfg.NumAttentionHeads / cfg.NumKeyValueHeads),
		rows:         float64(shape.Rows),
		tokens:       float64(shape.RealTokens),
		positions:    float64(shape.Rows * shape.Seq),
		loraRank:     float64(lora.Rank),
		lora:         lora.Targets,
	}
}

// projectionShape is a projection's [in, out].
func (d layerDims) projectionShape(p model.Projection) (in, out float64) {
	switch p {
	case model.ProjQ:
		return d.hidden, d.qDim
	case model.ProjK, model.ProjV:
		return d.hidden, d.kvDim
	case model.ProjO:
		return d.qDim, d.hidden
	case model.ProjGate, model.ProjUp:
		return d.hidden, d.intermediate
	default: // model.ProjDown
		return d.intermediate, d.hidden
	}
}

// frozen is forward x W^T plus the activation gradient dY W of a frozen
// projection with the given (possibly gathered) in and out sizes.
func frozen(tokens, in, out float64) float64 { return 4 * tokens * in * out }

func (d layerDims) loraFLOPs() float64 {
	var total float64
	for _, p := range d.lora {
		in, out := d.projectionShape(p)
		total += 6 * d.tokens * d.loraRank * (in + out)
	}
	return total
}

func (d layerDims) denseParts() FLOPBreakdown {
	return FLOPBreakdown{
		AttentionProjections: frozen(d.tokens, d.hidden, 2*d.qDim+2*d.kvDim),
		AttentionCore:        18 * d.heads * d.headDim * d.pairs,
		MLPProjections:       frozen(d.tokens, d.hidden, 3*d.intermediate),
		LoRA:                 d.loraFLOPs(),
	}
}

// sparseParts applies one layer's sparsity to the sparse-path tokens.
func (d layerDims) sparseParts(s LayerSparsity, svdRank int, sparsePathTokens float64) FLOPBreakdown {
	parts := d.denseParts()
	densePathTokens := d.tokens - sparsePathTokens
	rank := float64(svdRank)

	if s.Attention > 0 {
		kept := float64(s.KeptAttentionChannels(int(d.kvDim)))
		keptQ := d.group * kept // also o_proj's kept inputs
		parts.AttentionProjections = frozen(densePathTokens, d.hidden, 2*d.qDim+2*d.kvDim) +
			frozen(sparsePathTokens, d.hidden, 2*keptQ+2*kept)

		parts.Predictor += 2 * d.positions * rank * ((d.hidden + d.qDim) + 2*(d.hidden+d.kvDim))
		parts.PredictorKernels += 2 * d.positions * rank * (d.qDim + 2*d.kvDim)
	}
	if s.MLP > 0 {
		kept := float64(s.KeptMLPChannels(int(d.intermediate)))
		parts.MLPProjections = frozen(densePathTokens, d.hidden, 3*d.intermediate) +
			frozen(sparsePathTokens, d.hidden, 3*kept)
		ffn := 2 * 2 * d.rows * rank * (d.hidden + d.intermediate)
		parts.Predictor += ffn
		parts.PredictorKernels += ffn
	}
	return parts
}

// Table prints the per-layer counts in GFLOP, the LM head and the totals.
func (r FLOPReport) Table(w io.Writer) error {
	const giga = 1e9
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "layer\ts_mlp\ts_attn\tdense GFLOP\tsparse GFLOP\tsparse/dense\tsparse: attn proj\tattn core\tmlp\tlora\tpredictor\t\n")
	for _, l := range r.Layers {
		p := l.SparseParts
		fmt.Fprintf(tw, "%d\t%g\t%g\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n",
			l.Layer, l.Sparsity.MLP, l.Sparsity.Attention, l.Dense/giga, l.Sparse/giga, l.Sparse/l.Dense,
			p.AttentionProjections/giga, p.AttentionCore/giga, p.MLPProjections/giga, p.LoRA/giga, p.Predictor/giga)
	}
	// Rows without per-part figures end after their last value: empty
	// right-aligned cells would leave trailing spaces.
	fmt.Fprintf(tw, "lm_head\t\t\t%.3f\t%.3f\t%.3f\t\n", r.LMHead/giga, r.LMHead/giga, 1.0)
	fmt.Fprintf(tw, "total\t\t\t%.3f\t%.3f\t%.3f\t\n", r.Dense/giga, r.Sparse/giga, r.Ratio)
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("predictor: writing FLOP table: %w", err)
	}
	return nil
}
