package lora

import (
	"context"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// stepOf runs one LoRA forward and backward of a fixture's initial adapter
// on a fixed batch and returns the loss and every adapter gradient: dense, or
// sparse with the channels of sparseChannels.
func stepOf(t *testing.T, m *model.Model, fixture string, sparse bool) (float64, map[string][]float32) {
	t.Helper()
	adapters, err := Load(m, filepath.Join(fixtures.HF(t, fixture), "adapter_init"))
	if err != nil {
		t.Fatal(err)
	}
	defer adapters.Release()
	adapters.Attach(m)
	const rows, seq = 2, 9
	ws, err := m.NewWorkspace(rows, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	b := model.Batch{Rows: rows, Seq: seq}
	for i := range rows * seq {
		id := int32((i*37 + 5) % m.Config.VocabSize)
		b.InputIDs = append(b.InputIDs, id)
		b.Mask = append(b.Mask, 1)
		b.Labels = append(b.Labels, id)
	}
	if err := ws.Load(m, b); err != nil {
		t.Fatal(err)
	}
	var sel model.ChannelSelector
	if sparse {
		sel = sparseChannels(t, m)
	}
	rec := m.Dev.NewRecorder()
	defer rec.Release()
	if err := adapters.ZeroGrad(rec); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(rec, ws, sel); err != nil {
		t.Fatal(err)
	}
	if err := m.Backward(rec, ws); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	loss := gputest.Download(t, ws.Loss)
	grads := map[string][]float32{}
	for _, p := range adapters.Params() {
		grads[p.Name] = gputest.Download(t, p.Grad)
	}
	return float64(loss[0]), grads
}

// keptChannels keeps the same channels on every batch: attention's on layer
// 0 and the MLP's on the last layer, so that the gathered GEMMs (rows and K)
// run on the layers' weights.
type keptChannels struct {
	attn model.AttentionChannels
	mlp  *gpu.IndexList
	last int
}

// SparseScoredTokens: stepOf's batch scores every token, so they all run on
// the kept channels.
func (k keptChannels) SparseScoredTokens() bool { return true }

func (k keptChannels) Attention(_ *gpu.Recorder, layer int, _ *gpu.Tensor, _ *model.TokenSets) (model.AttentionChannels, error) {
	if layer == 0 {
		return k.attn, nil
	}
	return model.AttentionChannels{}, nil
}

func (k keptChannels) MLP(_ *gpu.Recorder, layer int, _ *gpu.Tensor, _ *model.TokenSets) (*gpu.IndexList, error) {
	if layer == k.last {
		return k.mlp, nil
	}
	return nil, nil
}

// sparseChannels keeps every other head dimension of q, k and v, a third of
// o's inputs and every third intermediate channel.
func sparseChannels(t *testing.T, m *model.Model) keptChannels {
	t.Helper()
	list := func(n, every int) *gpu.IndexList {
		var idx []uint32
		for i := 0; i < n; i += every {
			idx = append(idx, uint32(i))
		}
		l, err := m.Dev.NewIndexList(idx, len(idx), "kept channels")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Buf.Release)
		return &l
	}
	c := m.Config
	q, kv := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	return keptChannels{attn: model.AttentionChannels{Q: list(q, 2), K: list(kv, 2), V: list(kv, 2), O: list(q, 3)},
		mlp: list(c.IntermediateSize, 3), last: c.NumHiddenLayers - 1}
}

// decodeLogits appends a 6-token prompt and then 3 single tokens to a
// generator and returns the logits after each append, concatenated.
func decodeLogits(t *testing.T, m *model.Model) []float32 {
	t.Helper()
	g, err := m.NewGenerator(16, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	var all []float32
	for _, tokens := range [][]int32{{1, 7, 42, 3, 99, 5}, {11}, {250}, {17}} {
		logits, err := g.Append(context.Background(), tokens)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, logits...)
	}
	return all
}

// TestQuantizedStepMatchesDequantizedTwin quantizes the fixtures into
// MLX-format directories (llama-gqa: 4 bits in groups of 32 and 8 bits in
// groups of 64; qwen2-bias, whose LM head is its quantized embedding, 4 bits
// in groups of 32), loads them (codes on the GPU, read by the kernels), and
// checks that generation's logits (prompt and single-token decoding) and a
// LoRA step's loss and adapter gradients equal those of the fixture whose
// weights are replaced by the dequantized ones (f32 on the GPU) to 1e-5.
func TestQuantizedStepMatchesDequantizedTwin(t *testing.T) {
	for _, c := range []struct {
		fixture string
		spec    model.Quantization
	}{
		{"llama-gqa", model.Quantization{Bits: 4, GroupSize: 32}},
		{"llama-gqa", model.Quantization{Bits: 8, GroupSize: 64}},
		{"qwen2-bias", model.Quantization{Bits: 4, GroupSize: 32}},
	} {
		t.Run(c.fixture+" "+c.spec.String(), func(t *testing.T) {
			src := filepath.Join(fixtures.HF(t, c.fixture), "model")
			dir := filepath.Join(t.TempDir(), "quantized")
			report, err := model.QuantizeCheckpoint(src, dir, c.spec)
			if err != nil {
				t.Fatal(err)
			}
			qm, _, err := model.LoadWithWarnings(testDevice, dir, gpu.F32)
			if err != nil {
				t.Fatal(err)
			}
			defer qm.Release()
			twin, err := model.Load(testDevice, src, gpu.F32)
			if err != nil {
				t.Fatal(err)
			}
			defer twin.Release()
			floats := twin.NamedTensors()
			quantized, kept := 0, 0
			for _, r := range report {
				if r.Kept {
					kept++
				}
			}
			for name, w := range qm.NamedTensors() {
				if w.DType != gpu.Quantized {
					continue
				}
				quantized++
				values, err := w.Download(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if err := floats[name].Upload(values); err != nil {
					t.Fatal(err)
				}
			}
			// llama-gqa's down_proj (176 inputs) is no multiple of 32 or 64, so it
			// stays float, as mlx-lm leaves it.
			if quantized == 0 || quantized != len(report)-kept {
				t.Fatalf("%d quantized weights on the GPU, %d reported (%d kept float)", quantized, len(report), kept)
			}
			if c.fixture == "qwen2-bias" && (qm.Head != qm.Embed || qm.Head.DType != gpu.Quantized) {
				t.Fatalf("the tied LM head is not the quantized embedding")
			}
			// Generation: a prompt through the GEMMs, then single tokens through the
			// matrix-vector kernel, the embedding lookup and the LM head.
			logitsQ, logitsT := decodeLogits(t, qm), decodeLogits(t, twin)
			if e := gputest.RelL2(logitsQ, gputest.Float64s(logitsT)); !(e < 1e-5) {
				t.Errorf("decode logits: relative L2 difference %g from the dequantized twin", e)
			}
			// Dense, then sparse (the gathered GEMMs on quantized rows and K).
			for _, sparse := range []bool{false, true} {
				lossQ, gradsQ := stepOf(t, qm, c.fixture, sparse)
				lossT, gradsT := stepOf(t, twin, c.fixture, sparse)
				if d := math.Abs(lossQ-lossT) / math.Abs(lossT); !(d < 1e-5) {
					t.Errorf("sparse %t: loss %v, dequantized twin %v (relative difference %g)", sparse, lossQ, lossT, d)
				}
				for name, g := range gradsT {
					if e := gputest.RelL2(gradsQ[name], gputest.Float64s(g)); !(e < 1e-5) {
						t.Errorf("sparse %t: gradient %s: relative L2 difference %g from the dequantized twin", sparse, name, e)
					}
				}
				if sparse {
					_, dense := stepOf(t, twin, c.fixture, false)
					if !slices.ContainsFunc(slices.Collect(maps.Keys(dense)), func(name string) bool { return !slices.Equal(dense[name], gradsT[name]) }) {
						t.Errorf("the sparse step's gradients equal the dense step's: no channel was dropped")
					}
				}
			}
		})
	}
}

// TestMergeQuantizedBase merges an adapter into an MLX-quantized base: the
// output is a float checkpoint (bf16 by default, f32 when asked) without
// scales, biases or quantization config, each merged weight is the
// dequantized base weight (as the GPU reads it) plus the same scale B A that
// merging into the float base adds, and the report says the base was
// quantized.
func TestMergeQuantizedBase(t *testing.T) {
	floatDir := filepath.Join(fixtures.HF(t, "llama-gqa"), "model")
	adapterDir := filepath.Join(fixtures.HF(t, "llama-gqa"), "adapter_after_step2")
	qDir := filepath.Join(t.TempDir(), "quantized")
	if _, err := model.QuantizeCheckpoint(floatDir, qDir, model.Quantization{Bits: 4, GroupSize: 32}); err != nil {
		t.Fatal(err)
	}
	outQ, outF := filepath.Join(t.TempDir(), "merged-q"), filepath.Join(t.TempDir(), "merged-f")
	report := mustMerge(t, qDir, adapterDir, outQ, MergeOptions{Dtype: safetensors.F32})
	if report.BaseQuantized == nil || *report.BaseQuantized != (model.Quantization{Bits: 4, GroupSize: 32}) {
		t.Errorf("report says the base quantization is %v", report.BaseQuantized)
	}
	mustMerge(t, floatDir, adapterDir, outF, MergeOptions{Dtype: safetensors.F32})
	qm, _, err := model.LoadWithWarnings(testDevice, qDir, gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer qm.Release()
	onGPU := qm.NamedTensors()
	open := func(dir string) *safetensors.File {
		f, err := safetensors.Open(filepath.Join(dir, safetensors.SingleFileName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	merged, mergedF, base := open(outQ), open(outF), open(floatDir)
	if !slices.Equal(merged.Names(), base.Names()) {
		t.Fatalf("merged tensors %v, want the float base's %v", merged.Names(), base.Names())
	}
	for _, name := range report.Merged {
		w := onGPU[name]
		if w.DType != gpu.Quantized {
			continue // down_proj stayed float
		}
		deq, err := w.Download(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got, _, _ := readTensor(t, merged, name)
		gotF, _, _ := readTensor(t, mergedF, name)
		orig, _, _ := readTensor(t, base, name)
		want := make([]float64, len(deq))
		for i := range deq {
			want[i] = float64(deq[i]) + float64(gotF[i]) - float64(orig[i])
		}
		if e := relErrL2(got, want); !(e < 1e-6) {
			t.Errorf("%s: relative error %g against dequant(W) + scale B A", name, e)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(outQ, model.ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), "quantization") || !strings.Contains(string(cfg), `"float32"`) {
		t.Errorf("merged config keeps the quantization or lacks the dtype:\n%s", cfg)
	}
	// By default the merged checkpoint is bf16.
	outB := filepath.Join(t.TempDir(), "merged-bf16")
	if r := mustMerge(t, qDir, adapterDir, outB, MergeOptions{}); r.Dtype != safetensors.BF16 {
		t.Errorf("default output dtype %q, want BF16", r.Dtype)
	}
	if _, _, info := readTensor(t, open(outB), "model.layers.0.self_attn.q_proj.weight"); info.Dtype != safetensors.BF16 {
		t.Errorf("default merged weight is %s, want BF16", info.Dtype)
	}
}
