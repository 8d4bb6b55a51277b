package model_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// generationFixture is an HF fixture's f32 model, optionally with its initial
// PEFT adapter (adapter_init) attached, and its reference tensors.
type generationFixture struct {
	m       *model.Model
	set     *lora.Set // nil without the adapter
	ref     *safetensors.File
	release []func()
}

func openGenerationFixture(t testing.TB, name string, withAdapter bool) *generationFixture {
	t.Helper()
	dir := fixtures.HF(t, name)
	m, err := model.Load(model.SharedTestDevice(), filepath.Join(dir, "model"), gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	f := &generationFixture{m: m, release: []func(){m.Release}}
	t.Cleanup(f.close)
	if withAdapter {
		if f.set, err = lora.Load(m, filepath.Join(dir, "adapter_init")); err != nil {
			t.Fatal(err)
		}
		f.release = append(f.release, f.set.Release)
		f.set.Attach(m)
	}
	if f.ref, err = safetensors.Open(filepath.Join(dir, "reference.safetensors")); err != nil {
		t.Fatal(err)
	}
	f.release = append(f.release, func() { f.ref.Close() })
	return f
}

func (f *generationFixture) close() {
	for i := len(f.release) - 1; i >= 0; i-- {
		f.release[i]()
	}
	f.release = nil
}

// ints reads an I64 reference tensor.
func (f *generationFixture) ints(t testing.TB, name string) []int32 {
	t.Helper()
	info, err := f.ref.Info(name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Dtype != "I64" {
		t.Fatalf("%s is %s, want I64", name, info.Dtype)
	}
	raw, err := f.ref.ReadRaw(name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int32, len(raw)/8)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return out
}

// fullForwardLogits is the slow path: the whole sequence through a training
// workspace (full-sequence attention), and the logits of its last position.
func fullForwardLogits(t *testing.T, m *model.Model, tokens []int32) []float32 {
	t.Helper()
	n := len(tokens)
	ws, err := m.NewWorkspace(1, n)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	b := model.Batch{Rows: 1, Seq: n, InputIDs: tokens, Mask: make([]int32, n), Labels: make([]int32, n)}
	for i := range n {
		b.Mask[i], b.Labels[i] = 1, model.IgnoreLabel
	}
	if err := ws.Load(m, b); err != nil {
		t.Fatal(err)
	}
	logits, err := m.Dev.NewTensor(gpu.F32, "logits", n, m.Config.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	defer logits.Release()
	rec := m.Dev.NewRecorder()
	defer rec.Release()
	if err := m.Trunk(rec, ws, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Logits(rec, ws, logits); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	return gputest.Download(t, logits)[(n-1)*m.Config.VocabSize:]
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// TestGenerateGreedyMatchesHF regenerates the fixtures' greedy continuation
// (HF generate with the initial adapter), prefilling whole and in chunks.
func TestGenerateGreedyMatchesHF(t *testing.T) {
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		t.Run(name, func(t *testing.T) {
			f := openGenerationFixture(t, name, true)
			prompt, want := f.ints(t, "generate_prompt"), f.ints(t, "generate_greedy")
			n := len(want) - len(prompt)
			got, err := f.m.Generate(context.Background(), prompt, n, model.Greedy())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("greedy continuation %v, HF's %v", got[len(prompt):], want[len(prompt):])
			}
			got, err = f.m.GenerateStream(context.Background(), prompt, n, model.Greedy(), model.GenerateOptions{ChunkRows: 3})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("prefill in chunks of 3: greedy continuation %v, HF's %v", got[len(prompt):], want[len(prompt):])
			}
		})
	}
}

// TestGeneratorMatchesFullForward checks each step's logits against the full
// forward pass over the sequence so far, with and without adapters.
func TestGeneratorMatchesFullForward(t *testing.T) {
	for _, c := range []struct {
		fixture string
		adapter bool
	}{{"llama-gqa", false}, {"llama-gqa", true}, {"qwen2-bias", true}} {
		t.Run(fmt.Sprintf("%s adapter=%v", c.fixture, c.adapter), func(t *testing.T) {
			f := openGenerationFixture(t, c.fixture, c.adapter)
			prompt := f.ints(t, "generate_prompt")
			const steps = 6
			g, err := f.m.NewGenerator(len(prompt)+steps, 5) // the prompt in two chunks
			if err != nil {
				t.Fatal(err)
			}
			defer g.Release()
			seq := slices.Clone(prompt)
			logits, err := g.Append(context.Background(), prompt)
			if err != nil {
				t.Fatal(err)
			}
			for step := range steps {
				want := fullForwardLogits(t, f.m, seq)
				if err := gputest.RelL2(logits, widen(want)); err > 1e-5 || math.IsNaN(err) {
					t.Errorf("step %d (position %d): logits differ from the full forward by relative L2 %.3g", step, len(seq)-1, err)
				}
				next, slow := model.Greedy().Next(logits), model.Greedy().Next(want)
				if next != slow {
					t.Errorf("step %d: argmax %d, the full forward's %d", step, next, slow)
				}
				seq = append(seq, next)
				if logits, err = g.Append(context.Background(), []int32{next}); err != nil {
					t.Fatal(err)
				}
			}
			if g.Len() != len(seq) {
				t.Errorf("cache holds %d positions after %d tokens", g.Len(), len(seq))
			}
			if _, err := g.Append(context.Background(), []int32{1}); err == nil {
				t.Error("appending past the cache's capacity succeeded")
			}
		})
	}
}

// TestGenerationLeavesTrainingPassIntact generates between a training forward
// and its backward: the gradients must be those of an undisturbed step.
func TestGenerationLeavesTrainingPassIntact(t *testing.T) {
	f := openGenerationFixture(t, "llama-gqa", true)
	m, dev := f.m, f.m.Dev
	ids, mask, labels := f.ints(t, "input_ids"), f.ints(t, "attention_mask"), f.ints(t, "labels")
	rows := 2
	batch := model.Batch{Rows: rows, Seq: len(ids) / rows, InputIDs: ids, Mask: mask, Labels: labels}
	ws, err := m.NewWorkspace(batch.Rows, batch.Seq)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	if err := ws.Load(m, batch); err != nil {
		t.Fatal(err)
	}
	rec := dev.NewRecorder()
	defer rec.Release()
	step := func(between func()) (loss []float32, grads [][]float32) {
		if err := f.set.ZeroGrad(rec); err != nil {
			t.Fatal(err)
		}
		if err := m.Forward(rec, ws, nil); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		between()
		if err := m.Backward(rec, ws); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		for _, p := range f.set.Params() {
			grads = append(grads, gputest.Download(t, p.Grad))
		}
		return gputest.Download(t, ws.Loss), grads
	}
	wantLoss, wantGrads := step(func() {})
	gotLoss, gotGrads := step(func() {
		prompt := ids[:9]
		if _, err := m.Generate(context.Background(), prompt, 7, model.Greedy()); err != nil {
			t.Fatal(err)
		}
	})
	if gotLoss[0] != wantLoss[0] {
		t.Errorf("loss %v after generating, %v without", gotLoss[0], wantLoss[0])
	}
	for i := range wantGrads {
		if !slices.Equal(gotGrads[i], wantGrads[i]) {
			t.Errorf("gradient %d (%s) changed by generating between forward and backward: relative L2 %.3g",
				i, f.set.Params()[i].Name, gputest.RelL2(gotGrads[i], widen(wantGrads[i])))
		}
	}
}

// TestGenerateStopsAndStreams checks stop tokens, the streaming callback and
// its errors against the plain greedy continuation.
func TestGenerateStopsAndStreams(t *testing.T) {
	f := openGenerationFixture(t, "llama-gqa", true)
	prompt, full := f.ints(t, "generate_prompt"), f.ints(t, "generate_greedy")
	n := len(full) - len(prompt)
	stop := full[len(prompt)+4]
	end := len(prompt) + slices.Index(full[len(prompt):], stop) + 1
	var streamed []int32
	got, err := f.m.GenerateStream(context.Background(), prompt, n, model.Greedy(), model.GenerateOptions{
		Stop:    []int32{-5, stop},
		OnToken: func(tok int32) error { streamed = append(streamed, tok); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, full[:end]) {
		t.Errorf("with stop token %d: got %v, want %v", stop, got, full[:end])
	}
	if !slices.Equal(streamed, full[len(prompt):end]) {
		t.Errorf("streamed %v, want %v", streamed, full[len(prompt):end])
	}
	halt := errors.New("enough")
	got, err = f.m.GenerateStream(context.Background(), prompt, n, model.Greedy(), model.GenerateOptions{
		OnToken: func(int32) error { return halt },
	})
	if !errors.Is(err, halt) || !slices.Equal(got, full[:len(prompt)+1]) {
		t.Errorf("callback error: got %v, %v; want the first token and %v", got, err, halt)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.m.Generate(ctx, prompt, n, model.Greedy()); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: error %v", err)
	}
	if _, err := f.m.Generate(context.Background(), prompt, f.m.Rope.Seq, model.Greedy()); err == nil {
		t.Error("generating past the model's positions succeeded")
	}
}

// BenchmarkGeneration measures prefill and decode throughput at a context of
// 256 positions (120 for the fixture, whose RoPE table covers 128): a prompt of
// context-32 tokens, then 32 decoded ones. Run with -bench Generation
// -benchtime 1x.
func BenchmarkGeneration(b *testing.B) {
	dev := model.SharedTestDevice()
	moderate, err := model.ParseConfig([]byte(`{"model_type": "llama", "architectures": ["LlamaForCausalLM"],
		"vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
		"num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
		"max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": false}`), "moderate")
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name    string
		context int
		open    func(b *testing.B) *model.Model
	}{
		{"llama-gqa fixture", 120, func(b *testing.B) *model.Model { return openGenerationFixture(b, "llama-gqa", true).m }},
		{"random 512x4 layers vocab 8192", 256, func(b *testing.B) *model.Model {
			m, err := model.NewRandom(dev, moderate, gpu.F32, 512, 1)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(m.Release)
			return m
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			m := c.open(b)
			const decoded = 32
			prompt := make([]int32, c.context-decoded)
			for i := range prompt {
				prompt[i] = int32((i*7919 + 13) % m.Config.VocabSize)
			}
			g, err := m.NewGenerator(c.context, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer g.Release()
			ctx := context.Background()
			var prefill, decode time.Duration
			for i := 0; i < b.N+1; i++ { // the first round warms up (kernel compilation)
				g.Reset()
				t0 := time.Now()
				logits, err := g.Append(ctx, prompt)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				for range decoded {
					if logits, err = g.Append(ctx, []int32{model.Greedy().Next(logits)}); err != nil {
						b.Fatal(err)
					}
				}
				if i > 0 {
					prefill += t1.Sub(t0)
					decode += time.Since(t1)
				}
			}
			b.ReportMetric(float64(b.N*len(prompt))/prefill.Seconds(), "prefill-tok/s")
			b.ReportMetric(float64(b.N*decoded)/decode.Seconds(), "decode-tok/s")
		})
	}
}
