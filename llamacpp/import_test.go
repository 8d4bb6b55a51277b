package llamacpp

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model/gguf"
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
