// Package lora owns the LoRA adapters: the adapter of one projection (its A
// and B matrices and their gradients, on the GPU; the activations its backward
// needs live in the caller's workspace), the set of adapters of a model, PEFT
// adapter files and merging into the base weights. Semantics follow PEFT
// (SPEC.md section 3); the optimizer that updates the adapters is package optim.
//
// Ownership: a Set owns its adapters' A and B and their gradients, and
// Release frees them. Attach only makes the model call the adapters; the
// Params it lists share the set's tensors (the optimizer updates them in
// place and never frees them). Attach before creating the workspaces that run
// the adapters, and release the set after them.
package lora

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
)

// LoRA is the adapter y += scale * (x A^T) B^T of one projection, with A
// [rank, in] and B [out, rank] trainable f32 and scale = alpha / rank (PEFT).
// Gradients accumulate across micro-batches until ZeroGrad. It implements
// model.Adapter.
// It holds parameters, gradients and nothing of a pass: the activations its
// backward needs (x A^T) live in the caller's workspace, so an evaluation or a
// generation between a forward and its backward cannot corrupt the gradients.
type LoRA struct {
	in, out, rank int
	scale         float32

	a, b         *gpu.Tensor // A [rank, in], B [out, rank]
	gradA, gradB *gpu.Tensor
}

// New allocates a LoRA adapter for a projection from in to out features. A
// and B start at zero, which trains nothing (both gradients stay zero): call
// InitPEFT or SetWeights before use.
func New(dev *gpu.Device, in, out, rank int, alpha float32) (*LoRA, error) {
	switch {
	case dev == nil:
		return nil, errors.New("lora: nil device")
	case in <= 0 || out <= 0 || rank <= 0:
		return nil, fmt.Errorf("lora: in %d, out %d and rank %d must be positive", in, out, rank)
	case alpha == 0 || math.IsNaN(float64(alpha)) || math.IsInf(float64(alpha), 0):
		// gpu.Gemm reads Alpha 0 as 1, so a zero scale could not be expressed;
		// an adapter that adds nothing has no use anyway.
		return nil, fmt.Errorf("lora: alpha %g must be finite and non-zero", alpha)
	}
	l := &LoRA{
		in: in, out: out, rank: rank,
		// PEFT computes lora_alpha / r in Python floats; the f32 product then
		// rounds it once, as here.
		scale: float32(float64(alpha) / float64(rank)),
	}
	allocs := []struct {
		dst   **gpu.Tensor
		label string
		shape []int
	}{
		{&l.a, "lora A", []int{rank, in}},
		{&l.b, "lora B", []int{out, rank}},
		{&l.gradA, "lora dA", []int{rank, in}},
		{&l.gradB, "lora dB", []int{out, rank}},
	}
	for _, a := range allocs {
		t, err := dev.NewTensor(gpu.F32, a.label, a.shape...)
		if err != nil {
			l.Release()
			return nil, fmt.Errorf("lora: allocating %s %v: %w", a.label, a.shape, err)
		}
		*a.dst = t
	}
	return l, nil
}

// Release frees the adapter's GPU memory. Releasing twice is harmless.
func (l *LoRA) Release() {
	for _, t := range []*gpu.Tensor{l.a, l.b, l.gradA, l.gradB} {
		t.Release()
	}
}

// In is the projection's input width.
func (l *LoRA) In() int { return l.in }

// Out is the projection's output width.
func (l *LoRA) Out() int { return l.out }

// Rank is r, the inner dimension of A and B.
func (l *LoRA) Rank() int { return l.rank }

// Scale is alpha / rank as applied on the GPU.
func (l *LoRA) Scale() float32 { return l.scale }

// KaimingUniformBound is the bound of torch.nn.init.kaiming_uniform_ with
// a = sqrt(5) (PEFT's init of A): sqrt(6 / ((1 + a^2) fanIn)) = 1 / sqrt(fanIn).
func KaimingUniformBound(fanIn int) float64 { return 1 / math.Sqrt(float64(fanIn)) }

// InitPEFT sets PEFT's default initialisation: A uniform in (-bound, bound)
// with bound = KaimingUniformBound(in), drawn row-major from rng, and B = 0, so
// the adapter starts as the identity on the base model's output. The values
// follow from rng alone, so a seeded source makes runs reproducible (they do
// not reproduce torch's generator).
func (l *LoRA) InitPEFT(rng *rand.Rand) error {
	if rng == nil {
		return errors.New("lora: InitPEFT needs a random source")
	}
	bound := KaimingUniformBound(l.in)
	a := make([]float32, l.rank*l.in)
	for i := range a {
		// |2u-1| <= 1 and rounding to f32 is monotonic, so |a| <= float32(bound).
		a[i] = float32(bound * (2*rng.Float64() - 1))
	}
	return l.SetWeights(a, make([]float32, l.out*l.rank))
}

// SetWeights uploads A ([rank, in] row-major) and B ([out, rank]), e.g. from an
// adapter file.
func (l *LoRA) SetWeights(a, b []float32) error {
	if len(a) != l.rank*l.in || len(b) != l.out*l.rank {
		return fmt.Errorf("lora: SetWeights got %d and %d values, want A [%d, %d] = %d and B [%d, %d] = %d",
			len(a), len(b), l.rank, l.in, l.rank*l.in, l.out, l.rank, l.out*l.rank)
	}
	if err := l.a.Upload(a); err != nil {
		return fmt.Errorf("lora: uploading A: %w", err)
	}
	if err := l.b.Upload(b); err != nil {
		return fmt.Errorf("lora: uploading B: %w", err)
	}
	return nil
}

// Weights downloads A ([rank, in]) and B ([out, rank]), waiting for submitted
// work, e.g. to save an adapter file.
func (l *LoRA) Weights() (a, b []float32, err error) {
	ctx := context.Background()
	if a, err = l.a.Download(ctx); err != nil {
		return nil, nil, fmt.Errorf("lora: downloading A: %w", err)
	}
	if b, err = l.b.Download(ctx); err != nil {
		return nil, nil, fmt.Errorf("lora: downloading B: %w", err)
	}
	return a, b, nil
}

// Grads returns the gradient tensors dA [rank, in] and dB [out, rank].
func (l *LoRA) Grads() (gradA, gradB *gpu.Tensor) { return l.gradA, l.gradB }

// Params lists A and B with their gradients, for the Optimizer; Name is the
// PEFT suffix ("lora_A", "lora_B").
func (l *LoRA) Params() []optim.Param {
	return []optim.Param{
		{Name: "lora_A", Value: l.a, Grad: l.gradA},
		{Name: "lora_B", Value: l.b, Grad: l.gradB},
	}
}

// ZeroGrad records zeroing both gradients, which start the next accumulation.
func (l *LoRA) ZeroGrad(rec *gpu.Recorder) error {
	if rec == nil {
		return errors.New("lora: ZeroGrad: nil recorder")
	}
	for _, g := range []*gpu.Tensor{l.gradA, l.gradB} {
		rec.Clear(g.Buf, g.Offset, g.Bytes())
	}
	return nil
}

// Forward records xa = x A^T (which Backward needs: keeping it costs rank
// floats per token instead of a second pass over x) and y += scale * xa B^T for
// the token rows of x [.., in], y [.., out] and xa [.., rank] that rows names
// (gathered through its list, so padding rows cost nothing; other rows are
// left as they are).
func (l *LoRA) Forward(rec *gpu.Recorder, x, y, xa *gpu.Tensor, rows model.RowSet) error {
	if err := l.checkCall("Forward", rec, rows.Count, operand{"x", x, l.in}, operand{"y", y, l.out}, operand{"xa", xa, l.rank}); err != nil {
		return err
	}
	if rows.Count == 0 {
		return nil
	}
	products := []struct {
		what string
		args gpu.GemmArgs
	}{
		// x [T, in] times A^T: A is stored [rank, in] = N x K, hence B transposed (NT).
		{"x A^T", onRows(gpu.GemmArgs{A: x, B: l.a, C: xa, BTrans: true, M: rows.Count, N: l.rank, K: l.in}, rows)},
		// xa [T, rank] times B^T: B is stored [out, rank] = N x K (NT), added to y.
		{"scale xa B^T", onRows(gpu.GemmArgs{A: xa, B: l.b, C: y, BTrans: true, M: rows.Count, N: l.out, K: l.rank,
			Alpha: l.scale, Beta: 1}, rows)},
	}
	for _, p := range products {
		if err := gpu.Gemm(rec, p.args); err != nil {
			return fmt.Errorf("lora: Forward %s: %w", p.what, err)
		}
	}
	return nil
}

// Backward records, for the token rows that rows names of x [.., in], dy
// [.., out] and dx [.., in], using xa [.., rank] from the Forward of the same
// x and rows, and dxa [.., rank] as scratch:
//
//	dB  += scale * dy^T xa
//	dxa  = scale * dy B
//	dA  += dxa^T x
//	dx  += dxa A
func (l *LoRA) Backward(rec *gpu.Recorder, x, xa, dy, dx, dxa *gpu.Tensor, rows model.RowSet) error {
	if err := l.checkCall("Backward", rec, rows.Count, operand{"x", x, l.in}, operand{"xa", xa, l.rank}, operand{"dy", dy, l.out},
		operand{"dx", dx, l.in}, operand{"dxa", dxa, l.rank}); err != nil {
		return err
	}
	if rows.Count == 0 {
		return nil
	}
	n := rows.Count
	products := []struct {
		what string
		args gpu.GemmArgs
	}{
		// dy^T: dy is stored [T, out] = K x M (TN); xa [T, rank] is K x N.
		{"dB += scale dy^T xa", overRows(gpu.GemmArgs{A: dy, B: xa, C: l.gradB, ATrans: true, M: l.out, N: l.rank, K: n,
			Alpha: l.scale, Beta: 1}, rows)},
		// dy [T, out] = M x K; B [out, rank] = K x N (NN). Overwrites dxa.
		{"dxa = scale dy B", onRows(gpu.GemmArgs{A: dy, B: l.b, C: dxa, M: n, N: l.rank, K: l.out, Alpha: l.scale}, rows)},
		// dxa^T: dxa is stored [T, rank] = K x M (TN); x [T, in] is K x N.
		{"dA += dxa^T x", overRows(gpu.GemmArgs{A: dxa, B: x, C: l.gradA, ATrans: true, M: l.rank, N: l.in, K: n, Beta: 1}, rows)},
		// dxa [T, rank] = M x K; A [rank, in] = K x N (NN).
		{"dx += dxa A", onRows(gpu.GemmArgs{A: dxa, B: l.a, C: dx, M: n, N: l.in, K: l.rank, Beta: 1}, rows)},
	}
	for _, p := range products {
		if err := gpu.Gemm(rec, p.args); err != nil {
			return fmt.Errorf("lora: Backward %s: %w", p.what, err)
		}
	}
	return nil
}

// onRows makes a GEMM whose M axis is the tokens read and write only the rows
// of the list (M is then the list's bound; its count is read on the GPU).
func onRows(g gpu.GemmArgs, rows model.RowSet) gpu.GemmArgs {
	if rows.Gathered() {
		g.GatherAM, g.ScatterCM = rows.List, rows.List
	}
	return g
}

// overRows makes a GEMM whose K axis is the tokens (a sum over them) run over
// the rows of the list only.
func overRows(g gpu.GemmArgs, rows model.RowSet) gpu.GemmArgs {
	if rows.Gathered() {
		g.GatherK, g.GatherAK = rows.List, true
	}
	return g
}

// operand is a caller's activation tensor and the row width it must have.
type operand struct {
	name  string
	t     *gpu.Tensor
	width int
}

// checkCall validates a Forward or Backward call. gpu.Gemm takes a tensor's
// last dimension as its row stride, so a mismatched width would silently read
// the wrong elements rather than fail.
func (l *LoRA) checkCall(method string, rec *gpu.Recorder, tokens int, ops ...operand) error {
	if rec == nil {
		return fmt.Errorf("lora: %s: nil recorder", method)
	}
	if tokens < 0 {
		return fmt.Errorf("lora: %s of %d tokens", method, tokens)
	}
	for _, op := range ops {
		t := op.t
		switch {
		case t == nil:
			return fmt.Errorf("lora: %s: %s is nil", method, op.name)
		case t.DType != gpu.F32:
			return fmt.Errorf("lora: %s: %s is %s, want f32", method, op.name, t.DType)
		case len(t.Shape) == 0 || t.Shape[len(t.Shape)-1] != op.width:
			return fmt.Errorf("lora: %s: %s has shape %v, want rows of %d", method, op.name, t.Shape, op.width)
		case t.Len() < tokens*op.width:
			return fmt.Errorf("lora: %s: %s has shape %v, fewer than %d rows", method, op.name, t.Shape, tokens)
		}
	}
	return nil
}
