package llamacpp

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/tokenizer"
)

// ggufTokenizer writes the tokenizer metadata of the HF tokenizer in dir to a
// GGUF file, rebuilds the HF files from it into a new directory and returns
// the metadata and that directory.
func ggufTokenizer(t *testing.T, dir string) ([]gguf.KV, string) {
	t.Helper()
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := tokenizerMetadata(dir, &model.Config{VocabSize: tok.VocabSize()})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := gguf.Write(&buf, append([]gguf.KV{{Key: "general.architecture", Value: "llama"}}, meta...), nil); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	path := filepath.Join(out, "tok.gguf")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	tokJSON, cfgJSON, err := hfTokenizerFiles(g)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, "tokenizer.json"), tokJSON, 0o644)
	os.WriteFile(filepath.Join(out, "tokenizer_config.json"), cfgJSON, 0o644)
	return meta, out
}

// TestTokenizersThroughGGUF takes the LLaMA 2 (SentencePiece, "llama"),
// LLaMA 3 ("llama-bpe") and Qwen3 ("qwen2") tokenizers through GGUF
// metadata and back: the rebuilt tokenizer reproduces Hugging Face's ids on
// the fixtures' hard strings, and its metadata equals the first.
func TestTokenizersThroughGGUF(t *testing.T) {
	for _, c := range []struct{ name, model, pre string }{{"llama2", "llama", ""}, {"llama3", "gpt2", "llama-bpe"}, {"qwen3", "gpt2", "qwen2"}} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join("..", ".cache", "tokenizers", c.name)
			if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
				t.Fatalf("%v (make setup fetches the tokenizer files)", err)
			}
			meta, back := ggufTokenizer(t, dir)
			kv := map[string]any{}
			for _, m := range meta {
				kv[m.Key] = m.Value
			}
			if kv["tokenizer.ggml.model"] != c.model || (c.pre != "" && kv["tokenizer.ggml.pre"] != c.pre) {
				t.Fatalf("model %v pre %v, want %s %s", kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"], c.model, c.pre)
			}
			raw, err := os.ReadFile(filepath.Join("..", "testdata", "fixtures", "tokenizers", c.name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var fx struct {
				Cases []struct {
					Text           string `json:"text"`
					IDs            []int  `json:"ids"`
					IDsWithSpecial []int  `json:"ids_with_special"`
				} `json:"cases"`
			}
			if err := json.Unmarshal(raw, &fx); err != nil {
				t.Fatal(err)
			}
			tok, err := tokenizer.Load(back)
			if err != nil {
				t.Fatal(err)
			}
			for _, cs := range fx.Cases {
				if got := tok.Encode(cs.Text, false); !slices.Equal(got, cs.IDs) && !(len(got) == 0 && len(cs.IDs) == 0) {
					t.Errorf("%q: %v, Hugging Face %v", cs.Text, got, cs.IDs)
				}
				if got := tok.Encode(cs.Text, true); !slices.Equal(got, cs.IDsWithSpecial) {
					t.Errorf("%q with special tokens: %v, Hugging Face %v", cs.Text, got, cs.IDsWithSpecial)
				}
			}
			again, _ := ggufTokenizer(t, back)
			if !reflect.DeepEqual(again, meta) {
				for i := range min(len(meta), len(again)) {
					if !reflect.DeepEqual(meta[i], again[i]) {
						t.Fatalf("metadata %q changes through GGUF and back", meta[i].Key)
					}
				}
				t.Fatalf("metadata keys change through GGUF and back: %d vs %d", len(meta), len(again))
			}
		})
	}
}
