package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// crossEntropyReference is the float64 LM head: logits, per-row logsumexp, the
// mean loss over rows with a target and its gradient dh.
type crossEntropyReference struct {
	logits []float64 // [T, V]
	lse    []float64 // [T]
	loss   float64
	dh     []float64 // [T, C]
}

func referenceCrossEntropy(h, w []float32, targets []uint32, count, tokens, hidden, vocab int) crossEntropyReference {
	ref := crossEntropyReference{
		logits: make([]float64, tokens*vocab),
		lse:    make([]float64, tokens),
		dh:     make([]float64, tokens*hidden),
	}
	for t := range tokens {
		row := ref.logits[t*vocab : (t+1)*vocab]
		for v := range vocab {
			var z float64
			for c := range hidden {
				z += float64(h[t*hidden+c]) * float64(w[v*hidden+c])
			}
			row[v] = z
		}
		m := slices.Max(row)
		var s float64
		for _, z := range row {
			s += math.Exp(z - m)
		}
		ref.lse[t] = m + math.Log(s)
		if targets[t] == NoTarget {
			continue
		}
		ref.loss += (ref.lse[t] - row[targets[t]]) / float64(count)
		for v, z := range row {
			g := math.Exp(z - ref.lse[t])
			if uint32(v) == targets[t] {
				g--
			}
			g /= float64(count)
			for c := range hidden {
				ref.dh[t*hidden+c] += g * float64(w[v*hidden+c])
			}
		}
	}
	return ref
}

// roundBF16 is what a BF16 upload of v holds.
func roundBF16(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = gpu.FromBF16(gpu.ToBF16(x))
	}
	return out
}

// randomLabels gives batch sequences of seq labels in [0, vocab) with a few
// ignored ones, the first label of every sequence ignored (a prompt) and the last
// sequence right-padded by pad ignored labels.
func randomLabels(rng *rand.Rand, batch, seq, vocab, pad int) []int32 {
	labels := make([]int32, batch*seq)
	for i := range labels {
		switch {
		case i%seq == 0, i >= len(labels)-pad, rng.IntN(5) == 0:
			labels[i] = IgnoreLabel
		default:
			labels[i] = int32(rng.IntN(vocab))
		}
	}
	return labels
}

func TestTargets(t *testing.T) {
	labels := []int32{5, 6, -100, 7, -100, 8, 9, -100}
	targets, count, err := Targets(labels, 2, 4, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint32{6, NoTarget, 7, NoTarget, 8, 9, NoTarget, NoTarget}
	if !slices.Equal(targets, want) || count != 4 {
		t.Errorf("Targets = %v, %d; want %v, 4", targets, count, want)
	}

	if _, count, err := Targets(nil, 0, 7, 10); err != nil || count != 0 {
		t.Errorf("empty batch: count %d, error %v", count, err)
	}
	for _, tc := range []struct {
		name   string
		labels []int32
		batch  int
		seq    int
		vocab  int
		want   string
	}{
		{"label equal to vocab", []int32{1, 2, 3, 4, 5, 6, 10, 7}, 2, 4, 10, "sequence 1, position 2"},
		{"unused first label out of range", []int32{11, 2, 3, 4}, 1, 4, 10, "sequence 0, position 0"},
		{"negative label", []int32{1, -1, 3, 4}, 1, 4, 10, "label -1"},
		{"below ignore label", []int32{1, 2, -101, 4}, 1, 4, 10, "label -101"},
		{"length mismatch", []int32{1, 2, 3}, 1, 4, 10, "3 labels"},
		{"negative shape", nil, -1, 4, 10, "negative"},
		{"empty vocabulary", []int32{1}, 1, 1, 0, "vocabulary size 0"},
	} {
		if _, _, err := Targets(tc.labels, tc.batch, tc.seq, tc.vocab); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
}

// TestCrossEntropyReferenceGradient checks the float64 reference's dh against a
// central finite difference of its own loss, so the GPU tests compare against a
// gradient that is right.
func TestCrossEntropyReferenceGradient(t *testing.T) {
	const batch, seq, hidden, vocab = 2, 5, 6, 11
	rng := rand.New(rand.NewPCG(3, 4))
	tokens := batch * seq
	h := gputest.RandFloats(rng, tokens*hidden)
	w := gputest.RandFloats(rng, vocab*hidden)
	targets, count, err := Targets(randomLabels(rng, batch, seq, vocab, 2), batch, seq, vocab)
	if err != nil {
		t.Fatal(err)
	}
	ref := referenceCrossEntropy(h, w, targets, count, tokens, hidden, vocab)
	// h is float32, so perturb in float64 through a copy of the loss formula.
	loss := func(i int, delta float64) float64 {
		var total float64
		for r := range tokens {
			if targets[r] == NoTarget {
				continue
			}
			zs := make([]float64, vocab)
			for v := range vocab {
				for c := range hidden {
					x := float64(h[r*hidden+c])
					if r*hidden+c == i {
						x += delta
					}
					zs[v] += x * float64(w[v*hidden+c])
				}
			}
			m := slices.Max(zs)
			var s float64
			for _, z := range zs {
				s += math.Exp(z - m)
			}
			total += m + math.Log(s) - zs[targets[r]]
		}
		return total / float64(count)
	}
	if math.Abs(loss(-1, 0)-ref.loss) > 1e-12 {
		t.Fatalf("loss formulas disagree: %g vs %g", loss(-1, 0), ref.loss)
	}
	const eps = 1e-5
	for i := range h {
		numeric := (loss(i, eps) - loss(i, -eps)) / (2 * eps)
		if d := math.Abs(numeric - ref.dh[i]); d > 1e-7*(1+math.Abs(numeric)) {
			t.Errorf("dh[%d] = %g, finite difference %g", i, ref.dh[i], numeric)
		}
	}
}

func TestLMHeadMatchesReference(t *testing.T) {
	const batch, seq, hidden, vocab = 2, 7, 24, 517
	tokens := batch * seq
	for _, tc := range []struct {
		name  string
		dtype gpu.DType
		chunk int // 0: the default (one chunk here)
	}{
		{"f32 chunks of 100", gpu.F32, 100},
		{"bf16 chunks of 100", gpu.BF16, 100},
		{"bf16 odd chunks of 67", gpu.BF16, 67},
		{"f32 one chunk", gpu.F32, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []LMHeadOption
			if tc.chunk > 0 {
				opts = append(opts, WithChunkColumns(tc.chunk))
			}
			head, err := NewLMHead(testDevice, tokens, hidden, vocab, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer head.Release()
			if tc.chunk > 0 && head.ChunkColumns() != tc.chunk || tc.chunk == 0 && head.ChunkColumns() != vocab {
				t.Fatalf("chunk of %d columns", head.ChunkColumns())
			}
			// Scratch that a correct first chunk never reads starts as NaN.
			poisonTensor(t, head.state)
			poisonTensor(t, head.logits)

			rng := rand.New(rand.NewPCG(1, uint64(tc.chunk)))
			h := gputest.RandFloats(rng, tokens*hidden)
			// Logits with a spread of a few units, as a trained head gives.
			w := gputest.RandFloats(rng, vocab*hidden)
			for i := range w {
				w[i] *= 3 / float32(math.Sqrt(hidden))
			}
			if tc.dtype == gpu.BF16 {
				w = roundBF16(w)
			}
			hT := gputest.Upload(t, testDevice, gpu.F32, h, tokens, hidden)
			defer hT.Release()
			wT := gputest.Upload(t, testDevice, tc.dtype, w, vocab, hidden)
			defer wT.Release()

			// loss and targets share one buffer, targets at an unaligned offset,
			// so the kernels' base indices and the loss copy are exercised.
			const targetsWord = 3
			shared, err := testDevice.NewBuffer(uint64(4*(targetsWord+tokens)), "loss and targets")
			if err != nil {
				t.Fatal(err)
			}
			defer shared.Release()
			lossT := &gpu.Tensor{Buf: shared, Shape: []int{1}, DType: gpu.F32}
			targetsT := &gpu.Tensor{Buf: shared, Offset: 4 * targetsWord, Shape: []int{tokens}, DType: gpu.F32}

			// Two rounds with different labels: the second must not depend on
			// what the first left in the scratch.
			for round := range 2 {
				labels := randomLabels(rng, batch, seq, vocab, 3)
				targets, count, err := Targets(labels, batch, seq, vocab)
				if err != nil {
					t.Fatal(err)
				}
				if err := WriteTargets(targetsT, targets); err != nil {
					t.Fatal(err)
				}
				poisonTensor(t, lossT)
				dh := gputest.Poisoned(t, testDevice, tokens, hidden)
				defer dh.Release()
				logits := gputest.Poisoned(t, testDevice, tokens, vocab)
				defer logits.Release()
				lastLogits := gputest.Poisoned(t, testDevice, 1, vocab)
				defer lastLogits.Release()
				lastRow := &gpu.Tensor{Buf: hT.Buf, Offset: hT.Offset + uint64(4*(tokens-1)*hidden), Shape: []int{1, hidden}, DType: gpu.F32}

				rec := testDevice.NewRecorder()
				defer rec.Release()
				if err := head.Forward(rec, hT, RowSet{Count: tokens}, wT, targetsT, count, lossT); err != nil {
					t.Fatal(err)
				}
				if err := head.Backward(rec, hT, RowSet{Count: tokens}, wT, targetsT, count, dh, nil); err != nil {
					t.Fatal(err)
				}
				if err := head.Logits(rec, hT, wT, logits); err != nil {
					t.Fatal(err)
				}
				if err := head.Logits(rec, lastRow, wT, lastLogits); err != nil {
					t.Fatal(err)
				}
				gputest.Submit(t, rec)

				ref := referenceCrossEntropy(h, w, targets, count, tokens, hidden, vocab)
				check := func(name string, got []float32, want []float64, tol float64) {
					t.Helper()
					if e := gputest.RelL2(got, want); !(e < tol) {
						t.Errorf("round %d: %s relative error %.3g (tolerance %g)", round, name, e, tol)
					}
				}
				check("loss", gputest.Download(t, lossT), []float64{ref.loss}, 1e-5)
				check("lse", gputest.Download(t, head.LSE()), ref.lse, 1e-5)
				check("dh", gputest.Download(t, dh), ref.dh, 1e-4)
				check("logits", gputest.Download(t, logits), ref.logits, 1e-5)
				check("last row's logits", gputest.Download(t, lastLogits), ref.logits[(tokens-1)*vocab:], 1e-5)

				rowLoss := gputest.Download(t, head.RowLosses())
				for r, target := range targets {
					if target == NoTarget && rowLoss[r] != 0 {
						t.Errorf("round %d: token %d has no target but loss %g", round, r, rowLoss[r])
					}
				}
				if got := gputest.Download(t, targetsT); !slices.Equal(gpu.F32Bytes(got), gpu.U32Bytes(targets)) {
					t.Errorf("round %d: the loss copy overwrote the targets sharing its buffer", round)
				}
			}
		})
	}
}

// TestLMHeadWithoutTargets checks that a batch with no targets gives a zero
// loss and gradient rather than NaN.
func TestLMHeadWithoutTargets(t *testing.T) {
	const tokens, hidden, vocab = 6, 8, 40
	head, err := NewLMHead(testDevice, tokens, hidden, vocab, WithChunkColumns(16))
	if err != nil {
		t.Fatal(err)
	}
	defer head.Release()
	rng := rand.New(rand.NewPCG(5, 6))
	h := gputest.Upload(t, testDevice, gpu.F32, gputest.RandFloats(rng, tokens*hidden), tokens, hidden)
	defer h.Release()
	w := gputest.Upload(t, testDevice, gpu.F32, gputest.RandFloats(rng, vocab*hidden), vocab, hidden)
	defer w.Release()
	labels := slices.Repeat([]int32{IgnoreLabel}, tokens)
	targets, count, err := Targets(labels, 2, 3, vocab)
	if err != nil || count != 0 {
		t.Fatalf("Targets: count %d, error %v", count, err)
	}
	targetsT, err := testDevice.NewTensor(gpu.F32, "targets", tokens)
	if err != nil {
		t.Fatal(err)
	}
	defer targetsT.Release()
	if err := WriteTargets(targetsT, targets); err != nil {
		t.Fatal(err)
	}
	loss := gputest.Poisoned(t, testDevice, 1)
	defer loss.Release()
	dh := gputest.Poisoned(t, testDevice, tokens, hidden)
	defer dh.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := head.Forward(rec, h, RowSet{Count: tokens}, w, targetsT, count, loss); err != nil {
		t.Fatal(err)
	}
	if err := head.Backward(rec, h, RowSet{Count: tokens}, w, targetsT, count, dh, nil); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	if got := gputest.Download(t, loss); got[0] != 0 {
		t.Errorf("loss %g, want 0", got[0])
	}
	for i, g := range gputest.Download(t, dh) {
		if g != 0 {
			t.Fatalf("dh[%d] = %g, want 0", i, g)
		}
	}
}

func TestLMHeadInvalidArguments(t *testing.T) {
	const tokens, hidden, vocab = 4, 6, 30
	if _, err := NewLMHead(nil, tokens, hidden, vocab); err == nil {
		t.Error("nil device accepted")
	}
	for _, size := range [][3]int{{0, hidden, vocab}, {tokens, 0, vocab}, {tokens, hidden, 0}, {-1, hidden, vocab}} {
		if _, err := NewLMHead(testDevice, size[0], size[1], size[2]); err == nil {
			t.Errorf("sizes %v accepted", size)
		}
	}
	if _, err := NewLMHead(testDevice, tokens, hidden, vocab, WithChunkColumns(-1)); err == nil {
		t.Error("negative chunk accepted")
	}

	head, err := NewLMHead(testDevice, tokens, hidden, vocab, WithChunkColumns(7))
	if err != nil {
		t.Fatal(err)
	}
	defer head.Release()
	tensor := func(dtype gpu.DType, shape ...int) *gpu.Tensor {
		x, err := testDevice.NewTensor(dtype, "test operand", shape...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(x.Release)
		return x
	}
	h := tensor(gpu.F32, tokens, hidden)
	w := tensor(gpu.F32, vocab, hidden)
	targets := tensor(gpu.F32, tokens)
	loss := tensor(gpu.F32, 1)
	dh := tensor(gpu.F32, tokens, hidden)
	all := RowSet{Count: tokens}
	rec := testDevice.NewRecorder()
	defer rec.Release()

	if err := head.Backward(rec, h, all, w, targets, 1, dh, nil); err == nil || !strings.Contains(err.Error(), "Forward") {
		t.Errorf("Backward before Forward: %v", err)
	}
	if err := head.Forward(rec, h, all, w, targets, 1, loss); err != nil {
		t.Fatalf("valid operands: %v", err)
	}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"h with a wrong row length", func() error {
			return head.Forward(rec, tensor(gpu.F32, hidden, tokens), all, w, targets, 1, loss)
		}},
		{"more rows than the head holds", func() error {
			return head.Forward(rec, tensor(gpu.F32, tokens+1, hidden), RowSet{Count: tokens + 1}, w, tensor(gpu.F32, tokens+1), 1, loss)
		}},
		{"h with too few rows", func() error { return head.Forward(rec, tensor(gpu.F32, tokens-1, hidden), all, w, targets, 1, loss) }},
		{"dW of the wrong shape", func() error {
			return head.Backward(rec, h, all, w, targets, 1, dh, tensor(gpu.F32, vocab, hidden+1))
		}},
		{"dW sharing h's buffer", func() error { return head.Backward(rec, h, all, w, targets, 1, dh, h) }},
		{"bf16 h", func() error { return head.Forward(rec, tensor(gpu.BF16, tokens, hidden), all, w, targets, 1, loss) }},
		{"weight with a wrong vocabulary", func() error { return head.Forward(rec, h, all, tensor(gpu.F32, vocab+1, hidden), targets, 1, loss) }},
		{"transposed weight", func() error { return head.Forward(rec, h, all, tensor(gpu.F32, hidden, vocab), targets, 1, loss) }},
		{"short targets", func() error { return head.Forward(rec, h, all, w, tensor(gpu.F32, tokens-1), 1, loss) }},
		{"negative target count", func() error { return head.Forward(rec, h, all, w, targets, -1, loss) }},
		{"loss of two elements", func() error { return head.Forward(rec, h, all, w, targets, 1, tensor(gpu.F32, 2)) }},
		{"nil loss", func() error { return head.Forward(rec, h, all, w, targets, 1, nil) }},
		{"nil recorder", func() error { return head.Forward(nil, h, all, w, targets, 1, loss) }},
		{"targets beyond their buffer", func() error {
			shifted := *targets
			shifted.Offset = 8
			return head.Forward(rec, h, all, w, &shifted, 1, loss)
		}},
		{"dh of the wrong shape", func() error { return head.Backward(rec, h, all, w, targets, 1, tensor(gpu.F32, tokens, hidden+1), nil) }},
		{"dh overlapping h", func() error { return head.Backward(rec, h, all, w, targets, 1, h, nil) }},
		{"logits of the wrong shape", func() error { return head.Logits(rec, h, w, tensor(gpu.F32, tokens, vocab-1)) }},
		{"logits for a weight of the wrong shape", func() error {
			return head.Logits(rec, h, tensor(gpu.F32, vocab, hidden+1), tensor(gpu.F32, tokens, vocab))
		}},
	} {
		if err := tc.call(); err == nil {
			t.Errorf("%s accepted", tc.name)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}

	// A bf16 chunk of an odd-width table would start halfway into a u32 word.
	odd, err := NewLMHead(testDevice, tokens, 5, vocab, WithChunkColumns(7))
	if err != nil {
		t.Fatal(err)
	}
	defer odd.Release()
	err = odd.Forward(rec, tensor(gpu.F32, tokens, 5), all, tensor(gpu.BF16, vocab, 5), targets, 1, loss)
	if err == nil || !strings.Contains(err.Error(), "even chunk") {
		t.Errorf("bf16 weight with odd hidden size and odd chunks: %v", err)
	}
}

func TestLMHeadChunkColumns(t *testing.T) {
	lavapipe := gpu.Limits{MaxStorageBufferBindingSize: 128 << 20, MinStorageBufferOffsetAlignment: 256}
	h100 := gpu.Limits{MaxStorageBufferBindingSize: 4 << 30, MinStorageBufferOffsetAlignment: 256}
	for _, tc := range []struct {
		name                         string
		limits                       gpu.Limits
		tokens, hidden, vocab, asked int
		want                         int
	}{
		// LLaMA-3 8B: the weight binding, not the scratch, limits lavapipe.
		{"llama3 lavapipe", lavapipe, 2048, 4096, 128256, 0, 8064},
		{"llama3 h100", h100, 2048, 4096, 128256, 0, 8192},
		{"small vocabulary in one chunk", h100, 14, 24, 517, 0, 517},
		{"many tokens give narrow even chunks", lavapipe, 1 << 20, 64, 32000, 0, 16},
		{"requested", lavapipe, 14, 24, 517, 100, 100},
		{"requested wider than the vocabulary", lavapipe, 14, 24, 517, 1000, 517},
	} {
		got, err := chunkColumns(tc.limits, tc.tokens, tc.hidden, tc.vocab, tc.asked)
		if err != nil || got != tc.want {
			t.Errorf("%s: %d columns (error %v), want %d", tc.name, got, err, tc.want)
			continue
		}
		if tc.asked == 0 && (4*tc.tokens*got > lmHeadScratchBytes || uint64(4*tc.hidden*got)+256 > tc.limits.MaxStorageBufferBindingSize) {
			t.Errorf("%s: %d columns overflow the scratch budget or a binding", tc.name, got)
		}
	}
	if _, err := chunkColumns(lavapipe, 1<<20, 64, 32000, 1000); err == nil {
		t.Error("a requested chunk over the binding limit was accepted")
	}
	if _, err := chunkColumns(lavapipe, 1<<26, 64, 32000, 0); err == nil {
		t.Error("tokens too many for one column were accepted")
	}
}

func poisonTensor(t *testing.T, x *gpu.Tensor) {
	t.Helper()
	nan := make([]float32, x.Len())
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	if err := x.Upload(nan); err != nil {
		t.Fatal(err)
	}
}

// referenceWeightGrad is dW = dz^T h of the float64 reference: for each row r
// with a target, dz_r = (softmax(z_r) - onehot(target_r)) / count.
func referenceWeightGrad(h []float32, ref crossEntropyReference, targets []uint32, count, tokens, hidden, vocab int) []float64 {
	dW := make([]float64, vocab*hidden)
	for r := range tokens {
		if targets[r] == NoTarget {
			continue
		}
		for v := range vocab {
			g := math.Exp(ref.logits[r*vocab+v] - ref.lse[r])
			if uint32(v) == targets[r] {
				g--
			}
			g /= float64(count)
			for c := range hidden {
				dW[v*hidden+c] += g * float64(h[r*hidden+c])
			}
		}
	}
	return dW
}

// TestReferenceWeightGradient checks the float64 dW against a central finite
// difference of the loss in the weight, so the GPU test compares against a
// gradient that is right.
func TestReferenceWeightGradient(t *testing.T) {
	const tokens, hidden, vocab = 5, 4, 7
	rng := rand.New(rand.NewPCG(7, 8))
	h := gputest.RandFloats(rng, tokens*hidden)
	w := gputest.RandFloats(rng, vocab*hidden)
	targets := []uint32{3, NoTarget, 0, 6, 2}
	const count = 4
	ref := referenceCrossEntropy(h, w, targets, count, tokens, hidden, vocab)
	dW := referenceWeightGrad(h, ref, targets, count, tokens, hidden, vocab)
	loss := func(i int, delta float64) float64 {
		var total float64
		for r := range tokens {
			if targets[r] == NoTarget {
				continue
			}
			zs := make([]float64, vocab)
			for v := range vocab {
				for c := range hidden {
					x := float64(w[v*hidden+c])
					if v*hidden+c == i {
						x += delta
					}
					zs[v] += float64(h[r*hidden+c]) * x
				}
			}
			m := slices.Max(zs)
			var s float64
			for _, z := range zs {
				s += math.Exp(z - m)
			}
			total += m + math.Log(s) - zs[targets[r]]
		}
		return total / count
	}
	const eps = 1e-5
	for i := range w {
		numeric := (loss(i, eps) - loss(i, -eps)) / (2 * eps)
		if d := math.Abs(numeric - dW[i]); d > 1e-7*(1+math.Abs(numeric)) {
			t.Errorf("dW[%d] = %g, finite difference %g", i, dW[i], numeric)
		}
	}
}

// TestLMHeadRowListAndWeightGradient runs the head on rows named by a list (as
// training runs it on the scored tokens): the loss and the named rows of dh
// match the float64 reference of those rows alone, the other rows of dh are
// untouched, and dW accumulates dz^T h over the named rows, chunk by chunk.
func TestLMHeadRowListAndWeightGradient(t *testing.T) {
	const tokens, hidden, vocab, chunk = 10, 6, 23, 8
	for _, dtype := range []gpu.DType{gpu.F32, gpu.BF16} {
		t.Run(dtype.String(), func(t *testing.T) {
			head, err := NewLMHead(testDevice, tokens, hidden, vocab, WithChunkColumns(chunk))
			if err != nil {
				t.Fatal(err)
			}
			defer head.Release()
			rng := rand.New(rand.NewPCG(9, 10))
			h := gputest.RandFloats(rng, tokens*hidden)
			w := gputest.RandFloats(rng, vocab*hidden)
			if dtype == gpu.BF16 {
				w = roundBF16(w)
			}
			dW0 := gputest.RandFloats(rng, vocab*hidden)
			rows := []uint32{7, 2, 5, 9}
			targets := []uint32{4, NoTarget, 22, 0} // of the named rows, in list order
			const count = 3

			hT := gputest.Upload(t, testDevice, gpu.F32, h, tokens, hidden)
			defer hT.Release()
			wT := gputest.Upload(t, testDevice, dtype, w, vocab, hidden)
			defer wT.Release()
			dWT := gputest.Upload(t, testDevice, gpu.F32, dW0, vocab, hidden)
			defer dWT.Release()
			targetsT, err := testDevice.NewTensor(gpu.F32, "targets", tokens)
			if err != nil {
				t.Fatal(err)
			}
			defer targetsT.Release()
			if err := WriteTargets(targetsT, append(slices.Clone(targets), slices.Repeat([]uint32{NoTarget}, tokens-len(targets))...)); err != nil {
				t.Fatal(err)
			}
			list, err := testDevice.NewIndexList(rows, tokens, "rows")
			if err != nil {
				t.Fatal(err)
			}
			defer list.Buf.Release()
			set := RowSet{List: &list, Count: len(rows)}
			loss := gputest.Poisoned(t, testDevice, 1)
			defer loss.Release()
			dh := gputest.Poisoned(t, testDevice, tokens, hidden)
			defer dh.Release()

			rec := testDevice.NewRecorder()
			defer rec.Release()
			if err := head.Forward(rec, hT, set, wT, targetsT, count, loss); err != nil {
				t.Fatal(err)
			}
			if err := head.Backward(rec, hT, set, wT, targetsT, count, dh, dWT); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)

			compact := make([]float32, 0, len(rows)*hidden)
			for _, r := range rows {
				compact = append(compact, h[int(r)*hidden:int(r+1)*hidden]...)
			}
			ref := referenceCrossEntropy(compact, w, targets, count, len(rows), hidden, vocab)
			wantDW := referenceWeightGrad(compact, ref, targets, count, len(rows), hidden, vocab)
			for i := range wantDW {
				wantDW[i] += float64(dW0[i])
			}
			if e := gputest.RelL2(gputest.Download(t, loss), []float64{ref.loss}); !(e < 1e-5) {
				t.Errorf("loss relative error %.3g", e)
			}
			if e := gputest.RelL2(gputest.Download(t, head.LSE()), ref.lse); !(e < 1e-5) {
				t.Errorf("lse relative error %.3g", e)
			}
			gotDH := gputest.Download(t, dh)
			named := make([]float32, 0, len(compact))
			for _, r := range rows {
				named = append(named, gotDH[int(r)*hidden:int(r+1)*hidden]...)
			}
			if e := gputest.RelL2(named, ref.dh); !(e < 1e-4) {
				t.Errorf("dh of the named rows: relative error %.3g", e)
			}
			for r := range tokens {
				if slices.Contains(rows, uint32(r)) {
					continue
				}
				for _, g := range gotDH[r*hidden : (r+1)*hidden] {
					if !math.IsNaN(float64(g)) {
						t.Fatalf("dh row %d, not named, was written (%g)", r, g)
					}
				}
			}
			if e := gputest.RelL2(gputest.Download(t, dWT), wantDW); !(e < 1e-4) {
				t.Errorf("dW relative error %.3g", e)
			}
		})
	}
}
