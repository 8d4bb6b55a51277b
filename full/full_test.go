package full

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
)

var testDevice *gpu.Device

func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &testDevice)) }

func tinyConfig(t *testing.T, arch string, tied bool) *model.Config {
	t.Helper()
	raw := fmt.Sprintf(`{"model_type": %q, "vocab_size": 37, "hidden_size": 16, "intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
		"max_position_embeddings": 32, "rope_theta": 10000.0, "tie_word_embeddings": %t}`, arch, tied)
	cfg, err := model.ParseConfig([]byte(raw), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// batch is 2 rows of 7 tokens, the second right-padded, with a masked prompt.
func batch(vocab int) model.Batch {
	rng := rand.New(rand.NewPCG(9, 9))
	b := model.Batch{Rows: 2, Seq: 7}
	for r := range 2 {
		for i := range 7 {
			id := int32(rng.IntN(vocab))
			mask, label := int32(1), id
			if r == 1 && i >= 5 {
				id, mask, label = 0, 0, model.IgnoreLabel
			}
			if i < 2 {
				label = model.IgnoreLabel
			}
			b.InputIDs, b.Mask, b.Labels = append(b.InputIDs, id), append(b.Mask, mask), append(b.Labels, label)
		}
	}
	return b
}

// TestGradientsMatchFiniteDifferences checks the gradient of every kind of
// weight (embedding, norms, projections, biases, LM head; tied and untied)
// against central differences of the loss.
func TestGradientsMatchFiniteDifferences(t *testing.T) {
	for _, c := range []struct {
		arch string
		tied bool
	}{{"llama", false}, {"qwen2", true}} {
		t.Run(fmt.Sprintf("%s_tied=%t", c.arch, c.tied), func(t *testing.T) {
			cfg := tinyConfig(t, c.arch, c.tied)
			m, err := model.NewRandom(testDevice, cfg, gpu.F32, 32, 3)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release()
			if err := InitRandom(m, 0.3, 5); err != nil {
				t.Fatal(err)
			}
			// Non-trivial norms and biases, so their gradients are exercised.
			rng := rand.New(rand.NewPCG(1, 1))
			for name, w := range m.NamedTensors() {
				if isNorm(name) || isBias(name) {
					v := gputest.RandFloats(rng, w.Len())
					for i := range v {
						v[i] = 1 + 0.3*v[i]
					}
					if err := w.Upload(v); err != nil {
						t.Fatal(err)
					}
				}
			}
			set, err := New(m)
			if err != nil {
				t.Fatal(err)
			}
			defer set.Release()
			ws, err := m.NewWorkspace(2, 7)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Release()
			b := batch(cfg.VocabSize)
			if err := ws.Load(m, b); err != nil {
				t.Fatal(err)
			}
			rec := testDevice.NewRecorder()
			defer rec.Release()
			loss := func() float64 {
				if err := m.Forward(rec, ws, nil); err != nil {
					t.Fatal(err)
				}
				gputest.Submit(t, rec)
				v, err := ws.Loss.Download(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				return float64(v[0])
			}
			if err := set.ZeroGrad(rec); err != nil {
				t.Fatal(err)
			}
			if err := m.Forward(rec, ws, nil); err != nil {
				t.Fatal(err)
			}
			if err := m.Backward(rec, ws); err != nil {
				t.Fatal(err)
			}
			gputest.Submit(t, rec)
			checked := 0
			for _, p := range set.Params() {
				grad := gputest.Download(t, p.Grad)
				values := gputest.Download(t, p.Value)
				// Probe the element with the largest gradient and one other.
				best := 0
				for i, g := range grad {
					if math.Abs(float64(g)) > math.Abs(float64(grad[best])) {
						best = i
					}
				}
				for _, i := range []int{best, len(grad) / 2} {
					const eps = 1e-2
					orig := values[i]
					probe := func(delta float32) float64 {
						values[i] = orig + delta
						if err := p.Value.Upload(values); err != nil {
							t.Fatal(err)
						}
						return loss()
					}
					numeric := (probe(eps) - probe(-eps)) / (2 * eps)
					values[i] = orig
					if err := p.Value.Upload(values); err != nil {
						t.Fatal(err)
					}
					analytic := float64(grad[i])
					if d := math.Abs(numeric - analytic); d > 2e-3+0.05*math.Abs(numeric) {
						t.Errorf("%s[%d]: gradient %g, finite difference %g", p.Name, i, analytic, numeric)
					}
					checked++
				}
			}
			if checked < 20 {
				t.Errorf("only %d weights probed", checked)
			}
		})
	}
}

// Full training refuses a quantized model, saying why and what to do
// instead (not the bf16 advice: the weights are codes, not bf16).
func TestNewRefusesQuantizedWeights(t *testing.T) {
	cfg := tinyConfig(t, "llama", false)
	cfg.HiddenSize, cfg.IntermediateSize = 32, 64 // groups of 32 divide every input size
	m, err := model.NewRandomWith(testDevice, cfg, model.LoadOptions{DType: gpu.F32, Quantize: &model.Quantization{Bits: 4, GroupSize: 32}}, 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	s, err := New(m)
	if err == nil {
		s.Release()
		t.Fatal("full training of a quantized model was accepted")
	}
	if msg := err.Error(); !strings.Contains(msg, "drop --quantize") || strings.Contains(msg, "--bf16") {
		t.Errorf("error %q: want the advice to drop --quantize or use a float checkpoint", msg)
	}
}
