package llamacpp_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/llamacpp"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// rewriteGGUF copies the GGUF at src to dst with each tensor's type and
// data chosen by conv (given its type and its values as ggml dequantizes
// them).
func rewriteGGUF(t *testing.T, src, dst string, conv func(typ gguf.TensorType, values []float32) (gguf.TensorType, []byte)) {
	t.Helper()
	g, err := gguf.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var tensors []gguf.Tensor
	for _, info := range g.Tensors {
		values, err := g.ReadFloat32(info.Name)
		if err != nil {
			t.Fatal(err)
		}
		typ, data := conv(info.Type, values)
		tensors = append(tensors, gguf.Tensor{Name: info.Name, Dims: info.Dims, Type: typ,
			Data: func() ([]byte, error) { return data, nil }})
	}
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	if err := gguf.Write(w, g.Metadata, tensors); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// runLosses reads the losses of a run's metrics.jsonl.
func runLosses(t *testing.T, run string) []float64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(run, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var losses []float64
	for _, line := range jsonLines[map[string]any](t, string(raw)) {
		if l, ok := line["loss"].(float64); ok {
			losses = append(losses, l)
		}
	}
	return losses
}

// TestQuantizedGGUFEqualsDequantized makes Q8_0, Q4_0 and Q4_1 GGUFs of
// models/tiny and, from each, its twin with every tensor dequantized to F32
// (ggml's values). The quantized GGUF loads with its weights as
// group-affine codes on the GPU (gpu.Quantized, no float copy), the twin
// as float32; greedy generation gives the same tokens, and a short training
// run the same losses and adapter (LoRA gradients through the quantized
// weights) to 1e-5.
func TestQuantizedGGUFEqualsDequantized(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	in, err := gpu.NewInstance()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dev, err := in.OpenDevice(gputest.TestOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	cli(t, "data", "synth", "lookup", "--n", "8", "--seed", "3", "--out", data)
	for _, typ := range []gguf.TensorType{gguf.Q8_0, gguf.Q4_0, gguf.Q4_1} {
		t.Run(typ.String(), func(t *testing.T) {
			dir := t.TempDir()
			quantized := filepath.Join(dir, "q.gguf")
			if typ == gguf.Q4_1 {
				q40 := filepath.Join(dir, "q4_0.gguf")
				cli(t, "export", "gguf", "--model", "../models/tiny", "--dtype", "q4_0", "--out", q40)
				rewriteGGUF(t, q40, quantized, func(tt gguf.TensorType, v []float32) (gguf.TensorType, []byte) {
					if tt != gguf.Q4_0 {
						raw, _ := gguf.Encode(tt, v)
						return tt, raw
					}
					return gguf.Q4_1, llamacpp.EncodeQ4_1(v)
				})
			} else {
				cli(t, "export", "gguf", "--model", "../models/tiny", "--dtype", typ.String(), "--out", quantized)
			}
			twin := filepath.Join(dir, "f32.gguf")
			rewriteGGUF(t, quantized, twin, func(_ gguf.TensorType, v []float32) (gguf.TensorType, []byte) {
				raw, _ := gguf.Encode(gguf.F32, v)
				return gguf.F32, raw
			})

			// On the GPU: every 2-D weight of the quantized GGUF is codes, the
			// twin's are float32.
			for _, c := range []struct {
				path      string
				quantized bool
			}{{quantized, true}, {twin, false}} {
				rep, err := llamacpp.Materialize(c.path, filepath.Join(cache, "sparselora", "gguf"))
				if err != nil {
					t.Fatal(err)
				}
				m, err := model.Load(dev, rep.Dir, gpu.F32)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for name, w := range m.NamedTensors() {
					if len(w.Shape) != 2 {
						continue
					}
					n++
					if want := map[bool]gpu.DType{true: gpu.Quantized, false: gpu.F32}[c.quantized]; w.DType != want {
						t.Errorf("%s: %s is %v on the GPU, want %v", c.path, name, w.DType, want)
					}
				}
				m.Release()
				if c.quantized && (n == 0 || n != rep.Quantized) {
					t.Errorf("%s: %d 2-D weights on the GPU, %d kept quantized", c.path, n, rep.Quantized)
				}
			}

			genQ, genT := sparseloraGenerate(t, quantized, dir, 8), sparseloraGenerate(t, twin, dir, 8)
			if !slices.EqualFunc(genQ, genT, func(a, b generated) bool { return slices.Equal(a.IDs, b.IDs) }) {
				t.Errorf("generate: %v on the %s GGUF, %v on its dequantized twin", genQ, typ, genT)
			}

			var runs []string
			for i, m := range []string{quantized, twin} {
				out := filepath.Join(dir, fmt.Sprint("run", i))
				cli(t, "train", "--model", m, "--data", data, "--out", out, "--max-steps", "2", "--batch-size", "2", "--rank", "4",
					"--lr", "1e-2", "--sparsity", "dense", "--no-window", "--log-every", "1", "--svd-cache", filepath.Join(dir, "svd"))
				runs = append(runs, out)
			}
			lq, lt := runLosses(t, runs[0]), runLosses(t, runs[1])
			if len(lq) != 2 || len(lt) != 2 {
				t.Fatalf("losses %v and %v, want 2 steps each", lq, lt)
			}
			for i := range lq {
				if d := math.Abs(lq[i]-lt[i]) / math.Abs(lt[i]); !(d < 1e-5) {
					t.Errorf("step %d: loss %v on the %s GGUF, %v on its twin", i+1, lq[i], typ, lt[i])
				}
			}
			compareAdapters(t, filepath.Join(runs[0], "adapter_model.safetensors"), filepath.Join(runs[1], "adapter_model.safetensors"), 1e-5,
				fmt.Sprintf("training on the %s GGUF and on its twin", typ))
		})
	}
}

// TestExportFromQuantizedBaseSaysSo exports a model merged with an adapter
// trained on an MLX-quantized base (and the adapter alone): the command's
// output and the GGUF's metadata name the base's quantization, the weights
// are the base's dequantized values (not the float original's), and a float
// base's export carries no such key.
func TestExportFromQuantizedBaseSaysSo(t *testing.T) {
	dir := t.TempDir()
	floatDir := llamacpp.FixtureModel(t, "../testdata/fixtures/hf/llama-gqa")
	adapter := "../testdata/fixtures/hf/llama-gqa/adapter_after_step2"
	qDir := filepath.Join(dir, "q4")
	cli(t, "quantize", "--model", floatDir, "--bits", "4", "--group-size", "32", "--out", qDir)
	meta := func(path string) (string, bool) {
		g, err := gguf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if !g.Has(llamacpp.KeyBaseQuantization) {
			return "", false
		}
		v, err := g.String(llamacpp.KeyBaseQuantization)
		if err != nil {
			t.Fatal(err)
		}
		return v, true
	}
	const want = "MLX affine 4-bit, groups of 32; weights written from the dequantized base (adapter merged into them)"
	merged := filepath.Join(dir, "merged.gguf")
	out := cli(t, "export", "gguf", "--model", qDir, "--adapter", adapter, "--out", merged)
	if !strings.Contains(out, "base "+qDir+": quantized, "+want) {
		t.Errorf("export's output does not name the quantized base:\n%s", out)
	}
	if v, ok := meta(merged); v != want {
		t.Errorf("%s is %q (present %v), want %q", llamacpp.KeyBaseQuantization, v, ok, want)
	}
	adapterOnly := filepath.Join(dir, "adapter.gguf")
	cli(t, "export", "gguf", "--model", qDir, "--adapter", adapter, "--adapter-only", "--out", adapterOnly)
	if v, _ := meta(adapterOnly); v != want {
		t.Errorf("adapter GGUF: %s is %q, want %q", llamacpp.KeyBaseQuantization, v, want)
	}
	floatGGUF := filepath.Join(dir, "float.gguf")
	if out := cli(t, "export", "gguf", "--model", floatDir, "--adapter", adapter, "--out", floatGGUF); strings.Contains(out, "quantized") {
		t.Errorf("a float base's export says %q", out)
	}
	if v, ok := meta(floatGGUF); ok {
		t.Errorf("a float base's export has %s = %q", llamacpp.KeyBaseQuantization, v)
	}

	// The embedding (not adapted) is the quantized base's dequantized table.
	cfg, err := model.LoadConfig(filepath.Join(qDir, model.ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := safetensors.OpenDir(qDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	wantEmbed, err := model.DequantizedReader(cfg, ckpt).ReadFloat32("model.embed_tokens.weight")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := safetensors.OpenDir(floatDir)
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	origEmbed, _ := orig.ReadFloat32("model.embed_tokens.weight")
	g, err := gguf.Open(merged)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	got, err := g.ReadFloat32("token_embd.weight")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, wantEmbed) || slices.Equal(got, origEmbed) {
		t.Errorf("token_embd.weight is not the quantized base's dequantized embedding")
	}
}

// TestLlama3RopeAgrees gives models/tiny Llama 3's RoPE scaling (factor 8,
// low 1, high 4, original context 64, so that the scaling changes the
// angles of a short prompt) and checks that its f32 GGUF export carries
// rope_freqs.weight, that llama.cpp continues prompts greedily with the same
// 16 tokens as `sparselora generate` on the HF directory, that the GGUF
// loads back into sparselora with the same tokens, and that the scaling
// matters (the unscaled model continues differently).
func TestLlama3RopeAgrees(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir := t.TempDir()
	hf := filepath.Join(dir, "tiny-llama3")
	if err := os.Mkdir(hf, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} {
		data, err := os.ReadFile(filepath.Join("../models/tiny", name))
		if os.IsNotExist(err) && name == "generation_config.json" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if name == "config.json" {
			var cfg map[string]any
			if err := json.Unmarshal(data, &cfg); err != nil {
				t.Fatal(err)
			}
			cfg["rope_scaling"] = map[string]any{"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
				"original_max_position_embeddings": 64}
			data, _ = json.Marshal(cfg)
		}
		if err := os.WriteFile(filepath.Join(hf, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "llama3.gguf")
	cli(t, "export", "gguf", "--model", hf, "--dtype", "f32", "--out", path)
	g, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	info, ok := g.Tensor("rope_freqs.weight")
	g.Close()
	if !ok || info.Type != gguf.F32 || !slices.Equal(info.Dims, []int64{12}) {
		t.Fatalf("rope_freqs.weight: %+v (present %v), want F32 [12]", info, ok)
	}

	gen := sparseloraGenerate(t, hf, dir, 16)
	promptIDs := make([][]int32, len(gen))
	for i, g := range gen {
		promptIDs[i] = g.PromptIDs
	}
	theirs := llamaCpp(t, llamaRequest{Model: path, Prompts: promptIDs, MaxTokens: 16})
	for i, g := range gen {
		if got := untilEOG(theirs.Completions[i], 256); !slices.Equal(got, g.IDs) {
			t.Errorf("prompt %q: llama.cpp continues with %v, sparselora generate with %v", prompts[i], got, g.IDs)
		}
	}
	same := func(a, b []generated) bool {
		return slices.EqualFunc(a, b, func(x, y generated) bool { return slices.Equal(x.IDs, y.IDs) })
	}
	if again := sparseloraGenerate(t, path, dir, 16); !same(again, gen) {
		t.Errorf("generate --model llama3.gguf: %v, from the HF directory %v", again, gen)
	}
	if plain := sparseloraGenerate(t, "../models/tiny", dir, 16); same(plain, gen) {
		t.Errorf("the unscaled model continues the prompts as the scaled one does: the checks above cannot tell a dropped scaling")
	}
}
