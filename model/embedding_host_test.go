package model_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
)

// hostEmbeddingRun is what one model computes in TestHostEmbeddingMatchesGPU.
type hostEmbeddingRun struct {
	stepLoss   []float32            // the loss sum of two staged micro-batches
	grads      map[string][]float32 // their accumulated LoRA gradients
	loadedLoss []float32            // the loss of a batch given to Load
	embedded   []float32            // the first layer's input (HF's hidden_states[0])
	evalLoss   []float32            // a batch's loss in a forward-only workspace
	logits     []float32            // a prompt's last logits, then one decoded token's
}

// TestHostEmbeddingMatchesGPU runs the same LoRA work on a model whose
// embedding table is on the GPU and on the same model with the table in host
// memory: a step of two staged micro-batches (with and without activation
// checkpointing; rows padded, with a masked pad id), a batch given to Load,
// the same in a forward-only workspace (evaluation's), and generation (a prompt in two chunks, then a decoded token). The losses,
// LoRA gradients, embeddings and logits must be the same bits, for the
// llama-gqa fixture in f32 and bf16, quantized at load (f32 scales, where the
// device's rounding of s*q + b matters), and for random weights quantized
// with bf16 scales. The tied qwen2-bias fixture keeps its table on the GPU.
func TestHostEmbeddingMatchesGPU(t *testing.T) {
	dev := model.SharedTestDevice()
	gqa := fixtures.HF(t, "llama-gqa")
	random, err := model.BuiltinShape("llama3-8b")
	if err != nil {
		t.Fatal(err)
	}
	random.HiddenSize, random.IntermediateSize, random.NumHiddenLayers, random.VocabSize = 128, 192, 2, 300
	random.NumAttentionHeads, random.NumKeyValueHeads, random.HeadDim, random.MaxPositionEmbeddings = 4, 2, 32, 32
	cases := []struct {
		name string
		dir  string // a fixture, or "" for random weights of random
		opts model.LoadOptions
		ws   model.WorkspaceOptions
	}{
		{"llama-gqa f32", gqa, model.LoadOptions{DType: gpu.F32}, model.WorkspaceOptions{}},
		{"llama-gqa bf16, checkpoint segments of 2", gqa, model.LoadOptions{DType: gpu.BF16}, model.WorkspaceOptions{GradCheckpoint: true, CheckpointEvery: 2}},
		{"llama-gqa --quantize 4 (f32 scales)", gqa, model.LoadOptions{DType: gpu.F32, Quantize: &model.Quantization{Bits: 4, GroupSize: 32}}, model.WorkspaceOptions{}},
		{"random bf16 --quantize 8 (bf16 scales), checkpointing", "", model.LoadOptions{DType: gpu.BF16, Quantize: &model.Quantization{Bits: 8, GroupSize: 64}}, model.WorkspaceOptions{GradCheckpoint: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { compareHostEmbedding(t, c.dir, c.opts, c.ws, random) })
	}

	// A tied head needs the table on the GPU: the request is ignored.
	m, _, err := model.LoadWithOptions(dev, filepath.Join(fixtures.HF(t, "qwen2-bias"), "model"), model.LoadOptions{DType: gpu.F32, HostEmbedding: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if m.HostEmbed != nil || m.Embed == nil || m.Head != m.Embed {
		t.Errorf("tied qwen2-bias: table in host memory %t, on the GPU %t, head tied %t", m.HostEmbed != nil, m.Embed != nil, m.Head == m.Embed)
	}
}

// runHostEmbeddingWork runs TestHostEmbeddingMatchesGPU's work on m with set
// attached.
func runHostEmbeddingWork(t *testing.T, m *model.Model, set *lora.Set, wsOpts model.WorkspaceOptions) hostEmbeddingRun {
	t.Helper()
	dev := m.Dev
	const rows, seq = 2, 9
	V := m.Config.VocabSize
	batch := func(k int) model.Batch {
		b := model.Batch{Rows: rows, Seq: seq}
		for i := range rows * seq {
			id, mask, label := int32((i*37+5+k*11)%V), int32(1), int32(0)
			if i >= seq+6 { // the second row is padded after 6 tokens
				id, mask, label = int32(V-1), 0, -100
			} else {
				label = int32((i*13 + k) % V)
			}
			b.InputIDs, b.Mask, b.Labels = append(b.InputIDs, id), append(b.Mask, mask), append(b.Labels, label)
		}
		return b
	}
	ws, err := m.NewWorkspaceWith(rows, seq, wsOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	lossSum := gputest.Upload(t, dev, gpu.F32, []float32{0}, 1)
	defer lossSum.Release()
	rec := m.Dev.NewRecorder()
	defer rec.Release()
	var run hostEmbeddingRun
	if _, err := ws.Stage(m, []model.Batch{batch(0), batch(1)}); err != nil {
		t.Fatal(err)
	}
	if err := set.ZeroGrad(rec); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		steps := []func() error{
			func() error { return ws.UseStaged(rec, i) },
			func() error { return m.Forward(rec, ws, nil) },
			func() error { return gpu.Axpby(rec, lossSum, ws.Loss, 1, 1) },
			func() error { return m.Backward(rec, ws) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				t.Fatalf("micro-batch %d: %v", i, err)
			}
		}
	}
	gputest.Submit(t, rec)
	run.stepLoss = gputest.Download(t, lossSum)
	run.grads = map[string][]float32{}
	for _, p := range set.Params() {
		run.grads[p.Name] = gputest.Download(t, p.Grad)
	}

	if err := ws.Load(m, batch(2)); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(rec, ws, nil); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	run.loadedLoss = gputest.Download(t, ws.Loss)
	run.embedded = gputest.Download(t, ws.Hidden(0))

	// A forward-only workspace (evaluation) alternates two layer inputs: with
	// more than two layers its forward overwrites the uploaded rows, and a
	// second forward of the batch must be refused rather than run on them.
	eval, err := m.NewWorkspaceWith(rows, seq, model.WorkspaceOptions{ForwardOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eval.Release()
	if err := eval.Load(m, batch(3)); err != nil {
		t.Fatal(err)
	}
	if err := m.Forward(rec, eval, nil); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	run.evalLoss = gputest.Download(t, eval.Loss)
	again := dev.NewRecorder()
	defer again.Release()
	err = m.Forward(again, eval, nil)
	if overwritten := m.HostEmbed != nil && len(m.Layers) > 2; overwritten != (err != nil) {
		t.Errorf("a second forward of a loaded batch on a forward-only workspace of %d layers (host table %t): error %v", len(m.Layers), m.HostEmbed != nil, err)
	}

	g, err := m.NewGenerator(16, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release()
	prompt := []int32{1, 7, int32(V - 1), 3, 0, 9}
	for _, tokens := range [][]int32{prompt, {int32(V / 2)}} {
		logits, err := g.Append(context.Background(), tokens)
		if err != nil {
			t.Fatal(fmt.Errorf("generating after %v: %w", tokens, err))
		}
		run.logits = append(run.logits, logits...)
	}
	return run
}

// compareHostEmbedding runs TestHostEmbeddingMatchesGPU's work on the model
// of dir (a fixture, or "" for random weights of random) loaded with base,
// with the table on the GPU and in host memory, and compares the results.
func compareHostEmbedding(t *testing.T, dir string, base model.LoadOptions, wsOpts model.WorkspaceOptions, random *model.Config) {
	dev := model.SharedTestDevice()
	var runs [2]hostEmbeddingRun
	for i, host := range []bool{false, true} {
		opts := base
		opts.HostEmbedding = host
		var m *model.Model
		var err error
		if dir != "" {
			m, _, err = model.LoadWithOptions(dev, filepath.Join(dir, "model"), opts)
		} else {
			m, err = model.NewRandomWith(dev, random, opts, random.MaxPositionEmbeddings, 11)
		}
		if err != nil {
			t.Fatal(err)
		}
		if (m.HostEmbed != nil) != host || (m.Embed != nil) == host {
			t.Fatalf("host %t: table in host memory %t, on the GPU %t", host, m.HostEmbed != nil, m.Embed != nil)
		}
		var set *lora.Set
		if dir != "" {
			set, err = lora.Load(m, filepath.Join(dir, "adapter_init"))
		} else {
			set, err = lora.NewSet(m, lora.Config{Rank: 4, Alpha: 8, Targets: model.Projections}, 5)
		}
		if err != nil {
			t.Fatal(err)
		}
		set.Attach(m)
		runs[i] = runHostEmbeddingWork(t, m, set, wsOpts)
		set.Release()
		m.Release()
	}
	gpuRun, hostRun := runs[0], runs[1]
	same := func(what string, got, want []float32) {
		if !slices.EqualFunc(got, want, func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
			t.Errorf("%s with the table in host memory differs from the GPU table's", what)
		}
	}
	same("the step's loss", hostRun.stepLoss, gpuRun.stepLoss)
	same("the loaded batch's loss", hostRun.loadedLoss, gpuRun.loadedLoss)
	same("the embeddings", hostRun.embedded, gpuRun.embedded)
	same("the forward-only workspace's loss", hostRun.evalLoss, gpuRun.evalLoss)
	same("the generated logits", hostRun.logits, gpuRun.logits)
	if len(gpuRun.grads) == 0 {
		t.Fatal("no LoRA gradients")
	}
	for name, g := range gpuRun.grads {
		same("gradient "+name, hostRun.grads[name], g)
	}
}
