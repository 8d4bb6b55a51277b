package llamacpp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Test models: models/tiny (with its tokenizer) and the HF fixtures, which
// have no tokenizer: they get models/tiny's, cut to their vocabulary.
const (
	tinyDir     = "../models/tiny"
	llamaGQADir = "../testdata/fixtures/hf/llama-gqa"
	qwen2Dir    = "../testdata/fixtures/hf/qwen2-bias"
)

// fixtureModel copies a fixture's model directory into a temporary one and
// adds models/tiny's tokenizer with ids below the fixture's vocab_size.
func fixtureModel(t testing.TB, fixture string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(fixture, "model")
	// The tokenizer's BOS/EOS replace the fixture's ids, which name ordinary
	// tokens of models/tiny's vocabulary.
	gen := []byte(`{"bos_token_id": 257, "eos_token_id": 256}`)
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), gen, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", "model.safetensors"} {
		data, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var cfg struct {
		VocabSize int `json:"vocab_size"`
	}
	raw, _ := os.ReadFile(filepath.Join(src, "config.json"))
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(tinyDir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tj map[string]any
	if err := json.Unmarshal(raw, &tj); err != nil {
		t.Fatal(err)
	}
	m := tj["model"].(map[string]any)
	vocab := m["vocab"].(map[string]any)
	for tok, id := range vocab {
		if int(id.(float64)) >= cfg.VocabSize {
			delete(vocab, tok)
		}
	}
	var merges []any
	for _, mg := range m["merges"].([]any) {
		var pair [2]string
		switch mg := mg.(type) {
		case string:
			pair = splitMerge(mg)
		case []any:
			pair = [2]string{mg[0].(string), mg[1].(string)}
		}
		if _, ok := vocab[pair[0]+pair[1]]; ok {
			merges = append(merges, mg)
		}
	}
	m["merges"] = merges
	out, _ := json.Marshal(tj)
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	tc, err := os.ReadFile(filepath.Join(tinyDir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tc, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// splitMerge splits an "a b" merge string.
func splitMerge(s string) [2]string {
	a, b, _ := strings.Cut(s, " ")
	return [2]string{a, b}
}

// FixtureModel is fixtureModel for the external tests (llamacpp_test).
var FixtureModel = fixtureModel

// EncodeQ4_1 is encodeQ4_1 (ggml's Q4_1 quantizer) for the external tests.
var EncodeQ4_1 = encodeQ4_1
