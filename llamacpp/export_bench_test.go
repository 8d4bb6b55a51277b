package llamacpp

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// BenchmarkExport times `export gguf` of a random LLaMA-shaped checkpoint of
// 134 M parameters (hidden 1024, 8 layers, vocab 16384, f32 on disk) per
// output type; bytes/s count the f32 checkpoint read.
//
//	go test ./llamacpp -run XXX -bench Export -benchtime 3x
func BenchmarkExport(b *testing.B) {
	dir, total := benchCheckpoint(b)
	for _, typ := range []gguf.TensorType{gguf.F32, gguf.F16, gguf.BF16, gguf.Q8_0, gguf.Q4_0} {
		b.Run(fmt.Sprint(typ), func(b *testing.B) {
			b.SetBytes(total)
			out := filepath.Join(b.TempDir(), "m.gguf")
			for b.Loop() {
				if _, err := Export(context.Background(), ExportOptions{ModelDir: dir, Type: typ, TypeSet: true, Out: out}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchCheckpoint writes a random LLaMA-shaped f32 checkpoint of 134 M
// parameters (hidden 1024, 8 layers, vocab 16384) with models/tiny's
// tokenizer and returns its directory and its tensors' bytes.
func benchCheckpoint(b *testing.B) (string, int64) {
	dir := b.TempDir()
	cfg := map[string]any{"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama", "vocab_size": 16384,
		"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
		"num_key_value_heads": 8, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
		"tie_word_embeddings": false, "bos_token_id": 257, "eos_token_id": 256}
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
		data, err := os.ReadFile(filepath.Join(tinyDir, name))
		if err != nil {
			b.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), data, 0o644)
	}
	mc, err := model.ParseConfig(raw, "config.json")
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	tensors := map[string]safetensors.Tensor{}
	var total int64
	for name, shape := range model.ExpectedTensors(mc) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.02)
		}
		t, _ := safetensors.NewFloatTensor(safetensors.F32, shape, v)
		tensors[name] = t
		total += int64(len(t.Data))
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, nil); err != nil {
		b.Fatal(err)
	}
	return dir, total
}

// BenchmarkLoadQuantizedGGUF converts Q8_0 and Q4_0 GGUFs of the 134 M
// checkpoint (ToHF, timed) and loads them on the GPU, reporting the device's
// peak bytes after the load (gpu-MiB) and the converted checkpoint's size on
// disk (disk-MiB): Q-blocks stay 8/4-bit codes. The F32 case is the same
// model in float32, what a Q8_0/Q4_0 GGUF cost before it was kept quantized.
//
//	go test ./llamacpp -run XXX -bench LoadQuantizedGGUF -benchtime 1x
func BenchmarkLoadQuantizedGGUF(b *testing.B) {
	src, _ := benchCheckpoint(b)
	in, err := gpu.NewInstance()
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	dev, err := in.OpenDevice(gputest.TestOptions(b))
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	for _, typ := range []gguf.TensorType{gguf.F32, gguf.Q8_0, gguf.Q4_0} {
		b.Run(fmt.Sprint(typ), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "m.gguf")
			if _, err := Export(context.Background(), ExportOptions{ModelDir: src, Type: typ, TypeSet: true, Out: path}); err != nil {
				b.Fatal(err)
			}
			var dir string
			for b.Loop() {
				dir = b.TempDir()
				if _, err := ToHF(path, dir); err != nil {
					b.Fatal(err)
				}
			}
			st, err := os.Stat(filepath.Join(dir, "model.safetensors"))
			if err != nil {
				b.Fatal(err)
			}
			dev.ResetPeakBytes()
			base := dev.LiveBytes()
			m, err := model.Load(dev, dir, gpu.F32)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(dev.PeakBytes()-base)/(1<<20), "gpu-MiB")
			b.ReportMetric(float64(st.Size())/(1<<20), "disk-MiB")
			m.Release()
		})
	}
}
