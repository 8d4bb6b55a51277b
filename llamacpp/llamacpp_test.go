package llamacpp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sparselora/sparselora/app"
	"github.com/sparselora/sparselora/llamacpp"
	"github.com/sparselora/sparselora/model/safetensors"
)

// These tests run the real llama.cpp: node-llama-cpp@3.21.1 (prebuilt CPU
// binaries), which `make setup` installs into .cache/node-llama-cpp, driven
// by scripts/llamacpp.mjs. They fail, never skip, when it is missing.

type llamaRequest struct {
	Model     string    `json:"model"`
	Lora      string    `json:"lora,omitempty"`
	Tokenize  []string  `json:"tokenize,omitempty"`
	Prompts   [][]int32 `json:"prompts,omitempty"`
	MaxTokens int       `json:"maxTokens,omitempty"`
}

type llamaResult struct {
	Tokens      [][]int32 `json:"tokens"`
	Completions [][]int32 `json:"completions"`
}

func llamaCpp(t *testing.T, req llamaRequest) llamaResult {
	t.Helper()
	root, _ := filepath.Abs("..")
	dir := filepath.Join(root, ".cache", "node-llama-cpp")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "node-llama-cpp", "package.json")); err != nil {
		t.Fatalf("node-llama-cpp is not installed in %s (run `make setup`): %v", dir, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed for the llama.cpp tests (apt-get install nodejs npm; then make setup): %v", err)
	}
	in, _ := json.Marshal(req)
	t.Logf("llama.cpp %s", in)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(root, "scripts", "llamacpp.mjs"))
	cmd.Env = append(os.Environ(), "NODE_LLAMA_CPP_DIR="+dir)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("llama.cpp on %s: %v\n%s", req.Model, err, stderr.String())
	}
	var res llamaResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("llama.cpp output %q: %v", stdout.String(), err)
	}
	return res
}

// cli runs a sparselora command in process and fails the test on an error.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	t.Logf("sparselora %s", strings.Join(args, " "))
	var out, errOut bytes.Buffer
	if code := app.Main(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("sparselora %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String()
}

func jsonLines[T any](t *testing.T, s string) []T {
	t.Helper()
	var out []T
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		out = append(out, v)
	}
	return out
}

func writeJSONL(t *testing.T, path string, key string, values []string) {
	t.Helper()
	var b strings.Builder
	for _, v := range values {
		line, _ := json.Marshal(map[string]string{key: v})
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

var sampleTexts = []string{
	"Hello world, 12 + 34 = 46",
	"- Leo = 91\n- Zoe = 79",
	"  two leading spaces and\ttabs\n\nnewlines",
	"naïve café über 1234567",
	"What is 17 * 3?",
}

var prompts = []string{"He", "- Leo =", "What is 17 * 3?", "Zoe"}

type generated struct {
	PromptIDs []int32 `json:"prompt_ids"`
	IDs       []int32 `json:"ids"`
}

// sparseloraGenerate returns generate --json's prompts and completions.
func sparseloraGenerate(t *testing.T, modelArg, dir string, n int) []generated {
	path := filepath.Join(dir, "prompts.jsonl")
	writeJSONL(t, path, "prompt", prompts)
	return jsonLines[generated](t, cli(t, "generate", "--model", modelArg, "--data", path, "--max-new-tokens", fmt.Sprint(n), "--json"))
}

// untilEOG cuts llama.cpp's completion where sparselora's stops: before
// the end-of-generation token, which generate does not return.
func untilEOG(ids []int32, eos int32) []int32 {
	if i := slices.Index(ids, eos); i >= 0 {
		return ids[:i]
	}
	return ids
}

// TestLlamaCppAgrees exports models/tiny and the fixtures as f32 GGUF and
// checks that llama.cpp tokenizes as `sparselora tokenize` does and
// continues prompts greedily with the same 16 tokens as `sparselora
// generate`; that the base GGUF with the adapter GGUF gives the merged
// GGUF's tokens; and (reported, not asserted) how often a q8_0 and q4_0
// export agrees.
func TestLlamaCppAgrees(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	for _, c := range []struct{ name, model, adapter string }{
		{"tiny", "../models/tiny", ""},
		{"llama-gqa", llamacpp.FixtureModel(t, "../testdata/fixtures/hf/llama-gqa"), "../testdata/fixtures/hf/llama-gqa/adapter_after_step2"},
		{"qwen2-bias", llamacpp.FixtureModel(t, "../testdata/fixtures/hf/qwen2-bias"), "../testdata/fixtures/hf/qwen2-bias/adapter_after_step2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			f32 := filepath.Join(dir, "f32.gguf")
			cli(t, "export", "gguf", "--model", c.model, "--dtype", "f32", "--out", f32)

			textsPath := filepath.Join(dir, "texts.jsonl")
			writeJSONL(t, textsPath, "text", sampleTexts)
			ours := jsonLines[struct{ IDs []int32 }](t, cli(t, "tokenize", "--tokenizer", c.model, textsPath))
			theirs := llamaCpp(t, llamaRequest{Model: f32, Tokenize: sampleTexts})
			for i, text := range sampleTexts {
				want := ours[i].IDs
				if len(want) > 0 && want[0] == 257 { // tokenize adds the BOS; llama.cpp was asked for none
					want = want[1:]
				}
				if !slices.Equal(theirs.Tokens[i], want) {
					t.Errorf("%q: llama.cpp tokenizes as %v, sparselora as %v", text, theirs.Tokens[i], want)
				}
			}

			gen := sparseloraGenerate(t, c.model, dir, 16)
			promptIDs := make([][]int32, len(gen))
			for i, g := range gen {
				promptIDs[i] = g.PromptIDs
			}
			base := llamaCpp(t, llamaRequest{Model: f32, Prompts: promptIDs, MaxTokens: 16})
			for i, g := range gen {
				if got := untilEOG(base.Completions[i], 256); !slices.Equal(got, g.IDs) {
					t.Errorf("prompt %q: llama.cpp continues with %v, sparselora generate with %v", prompts[i], got, g.IDs)
				}
			}
			// The GGUF loads back into sparselora and generates the same.
			if again := sparseloraGenerate(t, f32, dir, 16); !slices.EqualFunc(again, gen, func(a, b generated) bool { return slices.Equal(a.IDs, b.IDs) }) {
				t.Errorf("generate --model f32.gguf: %v, from the HF directory %v", again, gen)
			}

			for _, q := range []string{"q8_0", "q4_0"} {
				path := filepath.Join(dir, q+".gguf")
				cli(t, "export", "gguf", "--model", c.model, "--dtype", q, "--out", path)
				qGen := sparseloraGenerate(t, path, dir, 16)
				qBase := llamaCpp(t, llamaRequest{Model: path, Prompts: promptIDs, MaxTokens: 16})
				same, total := 0, 0
				for i, g := range qGen {
					got := untilEOG(qBase.Completions[i], 256)
					for j := range min(len(got), len(g.IDs)) {
						if got[j] != g.IDs[j] {
							break
						}
						same++
					}
					total += max(len(got), len(g.IDs))
				}
				t.Logf("%s: llama.cpp and sparselora (on the %s GGUF, kept quantized) agree on %d of %d greedy tokens (common prefixes)", c.name, q, same, total)
			}

			if c.adapter == "" {
				return
			}
			merged := filepath.Join(dir, "merged.gguf")
			adapter := filepath.Join(dir, "adapter.gguf")
			cli(t, "export", "gguf", "--model", c.model, "--adapter", c.adapter, "--dtype", "f32", "--out", merged)
			cli(t, "export", "gguf", "--model", c.model, "--adapter", c.adapter, "--adapter-only", "--out", adapter)
			withMerged := llamaCpp(t, llamaRequest{Model: merged, Prompts: promptIDs, MaxTokens: 16})
			withAdapter := llamaCpp(t, llamaRequest{Model: f32, Lora: adapter, Prompts: promptIDs, MaxTokens: 16})
			differs := false
			for i := range promptIDs {
				if !slices.Equal(withAdapter.Completions[i], withMerged.Completions[i]) {
					t.Errorf("prompt %q: base + adapter GGUF gives %v, the merged GGUF %v", prompts[i], withAdapter.Completions[i], withMerged.Completions[i])
				}
				differs = differs || !slices.Equal(withMerged.Completions[i], base.Completions[i])
			}
			if !differs {
				t.Errorf("the adapter changes no completion: the check above cannot tell an ignored adapter")
			}
			withOurs := jsonLines[generated](t, cli(t, "generate", "--model", c.model, "--adapter", c.adapter, "--data", filepath.Join(dir, "prompts.jsonl"), "--max-new-tokens", "16", "--json"))
			for i, g := range withOurs {
				if got := untilEOG(withMerged.Completions[i], 256); !slices.Equal(got, g.IDs) {
					t.Errorf("prompt %q: llama.cpp on the merged GGUF continues with %v, sparselora generate --adapter with %v", prompts[i], got, g.IDs)
				}
			}
		})
	}
}

// TestTrainOnGGUFEqualsTrainOnHF trains the same short run on models/tiny
// and on its f32 GGUF export: the adapters agree to 1e-5.
func TestTrainOnGGUFEqualsTrainOnHF(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir := t.TempDir()
	f32 := filepath.Join(dir, "tiny.gguf")
	cli(t, "export", "gguf", "--model", "../models/tiny", "--dtype", "f32", "--out", f32)
	data := filepath.Join(dir, "train.jsonl")
	cli(t, "data", "synth", "lookup", "--n", "8", "--seed", "3", "--out", data)
	var adapters []string
	for i, m := range []string{"../models/tiny", f32} {
		out := filepath.Join(dir, fmt.Sprint("run", i))
		cli(t, "train", "--model", m, "--data", data, "--out", out, "--max-steps", "3", "--batch-size", "2", "--rank", "4",
			"--lr", "1e-2", "--sparsity", "dense", "--no-window", "--svd-cache", filepath.Join(dir, "svd"))
		adapters = append(adapters, filepath.Join(out, "adapter_model.safetensors"))
	}
	compareAdapters(t, adapters[0], adapters[1], 1e-5, "training on the HF directory and on the GGUF")
}

// compareAdapters fails t unless the two PEFT adapter files hold the same
// tensors, each within relative L2 error tol of the first file's (what
// describes the two runs, for the message).
func compareAdapters(t *testing.T, pathA, pathB string, tol float64, what string) {
	t.Helper()
	a, err := safetensors.Open(pathA)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := safetensors.Open(pathB)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !slices.Equal(a.Names(), b.Names()) {
		t.Fatalf("adapters hold %v and %v", a.Names(), b.Names())
	}
	for _, name := range a.Names() {
		x, errX := a.ReadFloat32(name)
		y, errY := b.ReadFloat32(name)
		if errX != nil || errY != nil {
			t.Fatalf("%s: %v, %v", name, errX, errY)
		}
		if len(x) != len(y) {
			t.Errorf("%s: %d and %d elements between %s", name, len(x), len(y), what)
			continue
		}
		var diff, norm float64
		for i := range x {
			diff += math.Pow(float64(x[i])-float64(y[i]), 2)
			norm += math.Pow(float64(x[i]), 2)
		}
		if rel := math.Sqrt(diff / max(norm, 1e-30)); !(rel < tol) {
			t.Errorf("%s: relative difference %.3g between %s", name, rel, what)
		}
	}
}
