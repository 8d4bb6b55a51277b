package llamacpp

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// rewrite exports models/tiny as f32, lets edit change its metadata and
// tensors, and writes the result.
func rewrite(t *testing.T, edit func(meta []gguf.KV, tensors []gguf.Tensor) ([]gguf.KV, []gguf.Tensor)) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.gguf")
	export(t, ExportOptions{ModelDir: tinyDir, Type: gguf.F32, TypeSet: true, Out: src})
	g, err := gguf.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	var tensors []gguf.Tensor
	for _, info := range g.Tensors {
		tensors = append(tensors, gguf.Tensor{Name: info.Name, Dims: info.Dims, Type: info.Type,
			Data: func() ([]byte, error) { return g.ReadRaw(info.Name) }})
	}
	meta, tensors := edit(append([]gguf.KV{}, g.Metadata...), tensors)
	var buf bytes.Buffer
	if err := gguf.Write(&buf, meta, tensors); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "edited.gguf")
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func setMeta(meta []gguf.KV, key string, v any) []gguf.KV {
	for i := range meta {
		if meta[i].Key == key {
			meta[i].Value = v
			return meta
		}
	}
	return append(meta, gguf.KV{Key: key, Value: v})
}

// TestToHFRejectsBadFiles: every malformed model is refused with an error
// that names the key or tensor at fault.
func TestToHFRejectsBadFiles(t *testing.T) {
	keep := func(meta []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) { return meta, ts }
	for _, c := range []struct {
		name string
		edit func([]gguf.KV, []gguf.Tensor) ([]gguf.KV, []gguf.Tensor)
		want string
	}{
		{"wrong metadata type", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "llama.block_count", int32(3)), ts
		}, `"llama.block_count" is i32, want u32`},
		{"missing key", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			var out []gguf.KV
			for _, kv := range m {
				if kv.Key != "llama.embedding_length" {
					out = append(out, kv)
				}
			}
			return out, ts
		}, `"llama.embedding_length" missing`},
		{"K-quant tensor", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			for i := range ts {
				if ts[i].Name == "blk.0.ffn_down.weight" { // [in 256, out 96]: one Q4_K super-block per row
					ts[i].Type = gguf.Q4_K
					ts[i].Data = func() ([]byte, error) { return make([]byte, 96*144), nil }
				}
			}
			return m, ts
		}, `tensor "blk.0.ffn_down.weight" has type Q4_K; sparselora reads F32, F16, BF16, Q8_0, Q4_0, Q4_1`},
		{"missing tensor", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return m, append(ts[:2:2], ts[3:]...)
		}, `tensor "blk.0.attn_q.weight" is missing`},
		{"extra layer", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			extra := ts[1]
			extra.Name = "blk.7.attn_norm.weight"
			return m, append(ts, extra)
		}, `tensor "blk.7.attn_norm.weight" does not fit the architecture`},
		{"unknown tensor", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			extra := ts[1]
			extra.Name = "blk.0.attn_sinks.weight"
			return m, append(ts, extra)
		}, `tensor "blk.0.attn_sinks.weight" has no place`},
		{"wrong shape", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "llama.feed_forward_length", uint32(128)), ts
		}, `tensor "blk.0.ffn_gate.weight" has dims [96 256]; the metadata implies [96 128]`},
		{"adapter file", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "general.type", "adapter"), ts
		}, "is a LoRA adapter GGUF"},
		{"other architecture", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "general.architecture", "gemma3"), ts
		}, `general.architecture "gemma3" is not supported`},
		{"unknown pre-tokenizer", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "tokenizer.ggml.pre", "deepseek-coder"), ts
		}, `"tokenizer.ggml.pre" is "deepseek-coder"`},
		{"token types of another length", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "tokenizer.ggml.token_type", gguf.Array{Elem: gguf.TypeInt32, Values: []int32{1}}), ts
		}, `"tokenizer.ggml.token_type" has 1 entries for 512 tokens`},
		{"bos beyond the vocabulary", func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			return setMeta(m, "tokenizer.ggml.bos_token_id", uint32(9999)), ts
		}, `"tokenizer.ggml.bos_token_id" is 9999`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := rewrite(t, c.edit)
			_, err := ToHF(path, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one saying %s", err, c.want)
			}
		})
	}
	// Unedited, the same file converts.
	if _, err := ToHF(rewrite(t, keep), t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// TestToHFDecodesEveryReadType converts exports in F16, BF16, Q8_0 and
// Q4_0, and a file with a Q4_1 tensor, back to HF weights: each weight is
// within its format's rounding of the original, the q/k rows are back in HF
// order, Q8_0/Q4_0/Q4_1 weights are kept as group-affine codes whose
// dequantized values equal ggml's dequantization of the blocks exactly,
// and every other tensor is float32.
func TestToHFDecodesEveryReadType(t *testing.T) {
	orig, err := safetensors.Open(filepath.Join(tinyDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	check := func(t *testing.T, path string, tol func(name string, w []float32) float64) {
		dir := t.TempDir()
		rep, err := ToHF(path, dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := model.LoadConfig(filepath.Join(dir, model.ConfigFileName))
		if err != nil {
			t.Fatal(err)
		}
		ckpt, err := safetensors.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer ckpt.Close()
		back := model.DequantizedReader(cfg, ckpt)
		g, err := gguf.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		quantized := 0
		for _, info := range g.Tensors {
			hf, _ := hfName(info.Name)
			stored, err := ckpt.Info(hf)
			if err != nil {
				t.Fatal(err)
			}
			want := safetensors.F32
			if keepsQuantized(info.Type) && len(info.Dims) == 2 {
				want = safetensors.U32
				quantized++
			}
			if stored.Dtype != want {
				t.Fatalf("%s (%s) is stored as %s, want %s", hf, info.Type, stored.Dtype, want)
			}
			ggml, err := g.ReadFloat32(info.Name)
			if err != nil {
				t.Fatal(err)
			}
			if heads := rotaryHeads(archLlama, hf, cfg); heads > 0 {
				ggml, _ = permuteRows(ggml, heads, int(info.Dims[0]), true)
			}
			got, err := back.ReadFloat32(hf)
			if err != nil {
				t.Fatal(err)
			}
			// Equal as numbers: ggml's d·(q-8) is -0 where ours, s·8 + (-8·s), is +0.
			for i := range ggml {
				if got[i] != ggml[i] || math.IsNaN(float64(got[i])) {
					t.Fatalf("%s (%s): element %d reads %g, ggml's dequantization %g", hf, info.Type, i, got[i], ggml[i])
				}
			}
		}
		if quantized != rep.Quantized {
			t.Fatalf("%d weights stored quantized, the report says %d", quantized, rep.Quantized)
		}
		for _, name := range orig.Names() {
			w, _ := orig.ReadFloat32(name)
			got, err := back.ReadFloat32(name)
			if err != nil {
				t.Fatal(err)
			}
			limit := tol(name, w)
			for i := range w {
				if d := math.Abs(float64(got[i] - w[i])); d > limit {
					t.Fatalf("%s (%s): element %d is %g, was %g (tolerance %g)", name, rep.TypeSummary(), i, got[i], w[i], limit)
				}
			}
		}
	}
	maxAbs := func(w []float32) float64 {
		m := 0.0
		for _, v := range w {
			m = math.Max(m, math.Abs(float64(v)))
		}
		return m
	}
	for _, c := range []struct {
		typ  gguf.TensorType
		step func(w []float32) float64 // largest rounding error for a 2-D weight
	}{
		{gguf.F16, func(w []float32) float64 { return maxAbs(w) / 1024 }},
		{gguf.BF16, func(w []float32) float64 { return maxAbs(w) / 128 }},
		{gguf.Q8_0, func(w []float32) float64 { return maxAbs(w)/127*0.5 + maxAbs(w)/1024 }},
		// Q4_0's codes reach -8·d but only +7·d: a value near minus the
		// block's extreme clamps to a whole step away.
		{gguf.Q4_0, func(w []float32) float64 { return maxAbs(w)/8 + maxAbs(w)/256 }},
	} {
		t.Run(c.typ.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.gguf")
			export(t, ExportOptions{ModelDir: tinyDir, Type: c.typ, TypeSet: true, Out: path})
			check(t, path, func(name string, w []float32) float64 {
				if info, _ := orig.Info(name); len(info.Shape) == 1 {
					return 0 // norms stay f32
				}
				return c.step(w)
			})
		})
	}
	t.Run("Q4_1", func(t *testing.T) {
		const target = "blk.1.ffn_up.weight"
		path := rewrite(t, func(m []gguf.KV, ts []gguf.Tensor) ([]gguf.KV, []gguf.Tensor) {
			for i := range ts {
				if ts[i].Name == target {
					data := ts[i].Data
					ts[i].Type = gguf.Q4_1
					ts[i].Data = func() ([]byte, error) {
						raw, err := data()
						if err != nil {
							return nil, err
						}
						v, _ := gguf.Decode(gguf.F32, raw, int64(len(raw)/4))
						return encodeQ4_1(v), nil
					}
				}
			}
			return m, ts
		})
		check(t, path, func(name string, w []float32) float64 {
			if name == "model.layers.1.mlp.up_proj.weight" {
				return maxAbs(w)*2/15*0.5 + maxAbs(w)/256
			}
			return 0
		})
	})
}

// encodeQ4_1 is ggml's quantize_row_q4_1_ref: per block d = (max-min)/15,
// m = min, codes round((x-min)/d), element j in the low nibble of byte j and
// element j+16 in the high nibble.
func encodeQ4_1(x []float32) []byte {
	var out []byte
	for b := 0; b < len(x)/32; b++ {
		blk := x[b*32 : (b+1)*32]
		lo, hi := blk[0], blk[0]
		for _, v := range blk {
			lo, hi = min(lo, v), max(hi, v)
		}
		d := (hi - lo) / 15
		var id float32
		if d != 0 {
			id = 1 / d
		}
		out = binary.LittleEndian.AppendUint16(out, safetensors.Float32ToHalf(d))
		out = binary.LittleEndian.AppendUint16(out, safetensors.Float32ToHalf(lo))
		code := func(v float32) byte { return byte(min(15, int8((v-lo)*id+0.5))) }
		for j := 0; j < 16; j++ {
			out = append(out, code(blk[j])|code(blk[j+16])<<4)
		}
	}
	return out
}
