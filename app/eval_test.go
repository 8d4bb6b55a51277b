package app

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// modelWithTokenizer is the llama-gqa fixture model (vocabulary 512) with a
// byte-level tokenizer of 260 ids, in a temporary model directory.
func modelWithTokenizer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, src := range []string{
		filepath.Join(fixtureModel(t), "config.json"), filepath.Join(fixtureModel(t), "model.safetensors"),
		filepath.Join(fixtureModel(t), "generation_config.json"),
		filepath.Join("..", "testdata", "tokenizers", "bytes", "tokenizer.json"),
		filepath.Join("..", "testdata", "tokenizers", "bytes", "tokenizer_config.json"),
	} {
		raw, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func writeLines(t *testing.T, path string, lines ...any) {
	t.Helper()
	var b strings.Builder
	for _, l := range lines {
		raw, _ := json.Marshal(l)
		b.Write(raw)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTrainEvalGenerateWithTokenizer trains an adapter on text data with a
// tokenizer, then measures it with eval (loss and exact match) and generates
// with it.
func TestTrainEvalGenerateWithTokenizer(t *testing.T) {
	modelDir := modelWithTokenizer(t)
	dir := t.TempDir()
	trainFile, evalFile := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "eval.jsonl")
	var examples []any
	for i := range 8 {
		examples = append(examples, map[string]string{"prompt": strings.Repeat("ab", i+1) + "=", "completion": "x"})
	}
	writeLines(t, trainFile, examples...)
	writeLines(t, evalFile, map[string]string{"prompt": "abab=", "completion": "x", "answer": "x"},
		map[string]string{"prompt": "ab=", "completion": "x", "answer": "x"})
	out := filepath.Join(dir, "run")
	code, stdout, stderr := run(t, "train", "--model", modelDir, "--data", trainFile, "--out", out, "--max-steps", "40",
		"--batch-size", "4", "--lr", "2e-2", "--rank", "8", "--sparsity", "dense", "--log-every", "20", "--no-window",
		"--eval-data", evalFile, "--eval-metric", "exact-match", "--eval-max-new-tokens", "2")
	if code != 0 || !strings.Contains(stdout, "exact match 2/2") {
		t.Fatalf("train: exit %d (want exact match 2/2 at the end)\n%s\n%s", code, stdout, stderr)
	}

	code, stdout, stderr = run(t, "eval", "--model", modelDir, "--adapter", out, "--data", evalFile)
	if code != 0 || !strings.Contains(stdout, "perplexity") {
		t.Fatalf("eval loss: exit %d\n%s\n%s", code, stdout, stderr)
	}
	results := filepath.Join(dir, "results.jsonl")
	code, stdout, stderr = run(t, "eval", "--model", modelDir, "--adapter", out, "--data", evalFile, "--metric", "exact-match",
		"--max-new-tokens", "3", "--out", results)
	if code != 0 || !strings.Contains(stdout, "exact match: ") || !strings.Contains(stdout, "95 % CI") {
		t.Fatalf("eval exact-match: exit %d\n%s\n%s", code, stdout, stderr)
	}
	f, err := os.Open(results)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); n++ {
		var r struct {
			Line   int    `json:"line"`
			Answer string `json:"answer"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Line != n+1 || r.Answer != "x" {
			t.Errorf("result line %d: %s (%v)", n+1, sc.Text(), err)
		}
	}
	if n != 2 {
		t.Errorf("%d results, want 2", n)
	}

	// Generation: the adapter learnt to answer "x" after "=" (greedy).
	code, stdout, stderr = run(t, "generate", "--model", modelDir, "--adapter", out, "--prompt", "ababab=", "--max-new-tokens", "1")
	if code != 0 || strings.TrimSpace(stdout) != "x" {
		t.Errorf("generate: exit %d, output %q (want x)\n%s", code, stdout, stderr)
	}
	code, _, stderr = run(t, "generate", "--model", modelDir, "--prompt", "a", "--data", evalFile)
	if code == 0 || !strings.Contains(stderr, "--prompt and --data") {
		t.Errorf("generate with --prompt and --data: exit %d, %s", code, stderr)
	}
	code, _, stderr = run(t, "eval", "--model", modelDir, "--data", evalFile, "--metric", "bleu")
	if code == 0 || !strings.Contains(stderr, "--metric") {
		t.Errorf("eval --metric bleu: exit %d, %s", code, stderr)
	}
}
