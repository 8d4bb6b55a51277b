package data_test

// Runs the formats through the real Llama 3 and Qwen3 tokenizers (the files
// the HF fixtures were made with) and compares with the fixtures' token ids.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/tokenizer"
)

var _ data.Tokenizer = (*tokenizer.Tokenizer)(nil)

func loadReal(t *testing.T, name string) (*tokenizer.Tokenizer, *fixtures.TokenizerCases) {
	t.Helper()
	dir := fixtures.Tokenizer(t, name)
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tok, fixtures.LoadTokenizerCases(t, name)
}

func writeJSONL(t *testing.T, lines []any) string {
	t.Helper()
	var b strings.Builder
	for _, l := range lines {
		j, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "d.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func int32s(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}

// scoredText decodes the scored tokens of an example (special tokens kept).
func scoredText(tok *tokenizer.Tokenizer, ex data.Example) string {
	var scored []int
	for t, l := range ex.Labels {
		if l != data.IgnoreIndex {
			if l != ex.IDs[t] {
				return "<label differs from id>"
			}
			scored = append(scored, int(l))
		}
	}
	return tok.Decode(scored, false)
}

func TestRealTokenizers(t *testing.T) {
	// The scored part of the fixtures' conversations that end in an assistant
	// turn or continue after one: the reply and its end-of-turn token (for
	// Qwen3 the empty think block its template adds to the last reply).
	wantScored := map[string]map[string]string{
		"qwen3": {
			"7 is prime.": "<think>\n\n</think>\n\n7 is prime.<|im_end|>",
			"ok":          "ok<|im_end|>",
		},
		"llama3": {
			"7 is prime.": "7 is prime.<|eot_id|>",
			"ok":          "ok<|eot_id|>",
		},
	}
	// testdata/messages.jsonl line 3: two replies; Qwen3's template renders
	// the first without a think block once the conversation goes on.
	wantScoredTwoTurns := map[string]string{
		"qwen3":  "Hi!<|im_end|><think>\n\n</think>\n\nHi again!<|im_end|>",
		"llama3": "Hi!<|eot_id|>Hi again!<|eot_id|>",
	}
	generationPrompt := map[string]string{"qwen3": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
	for _, name := range []string{"qwen3", "llama3"} {
		t.Run(name, func(t *testing.T) {
			tok, fx := loadReal(t, name)
			eos, ok := tok.EOS()
			if !ok {
				t.Fatal("no EOS")
			}

			// messages: ids as HF's apply_chat_template(tokenize=True).
			var lines []any
			var chats []int
			for i, c := range fx.Chat {
				if !c.AddGenerationPrompt && strings.Contains(string(c.Messages), `"assistant"`) {
					lines = append(lines, map[string]any{"messages": c.Messages})
					chats = append(chats, i)
				}
			}
			if len(chats) < 2 {
				t.Fatalf("fixture has %d usable conversations", len(chats))
			}
			ds, err := data.Load(writeJSONL(t, lines), tok, data.Options{VocabSize: tok.VocabSize()})
			if err != nil {
				t.Fatal(err)
			}
			for k, i := range chats {
				c, ex := fx.Chat[i], ds.Examples[k]
				if !slices.Equal(ex.IDs, int32s(c.IDs)) {
					t.Errorf("conversation %d: ids differ from HF\n got %v\nwant %v", i, ex.IDs, c.IDs)
				}
				want, ok := wantScored[name][ex.Answer]
				if !ok {
					t.Fatalf("conversation %d: unexpected answer %q", i, ex.Answer)
				}
				if got := scoredText(tok, ex); got != want {
					t.Errorf("conversation %d: scored %q, want %q", i, got, want)
				}
				if prompt := tok.Decode(intsOf(ex.IDs[:ex.PromptLen]), false); prompt != ex.Prompt || !strings.HasSuffix(prompt, generationPrompt[name]) {
					t.Errorf("conversation %d: prompt tokens decode to %q (Prompt %q)", i, prompt, ex.Prompt)
				}
			}

			ds, err = data.Load(filepath.Join("testdata", "messages.jsonl"), tok, data.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := scoredText(tok, ds.Examples[2]); got != wantScoredTwoTurns[name] {
				t.Errorf("testdata/messages.jsonl:3: scored %q, want %q", got, wantScoredTwoTurns[name])
			}
			for _, file := range []string{"alpaca.jsonl", "prompt_completion.jsonl", "text.jsonl"} {
				if _, err := data.Load(filepath.Join("testdata", file), tok, data.Options{}); err != nil {
					t.Error(err)
				}
			}

			// text and prompt/completion: ids as HF's tokenizer(text).
			var textLines, pcLines []any
			var textCases []int
			for i, c := range fx.Cases {
				if len(c.IDsWithSpecial) >= 2 {
					textLines = append(textLines, map[string]string{"text": c.Text})
					textCases = append(textCases, i)
				}
			}
			for k := 0; k+1 < len(textCases); k += 2 {
				pcLines = append(pcLines, map[string]string{"prompt": fx.Cases[textCases[k]].Text, "completion": fx.Cases[textCases[k+1]].Text})
			}
			ds, err = data.Load(writeJSONL(t, textLines), tok, data.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for k, i := range textCases {
				if ex := ds.Examples[k]; !slices.Equal(ex.IDs, int32s(fx.Cases[i].IDsWithSpecial)) || !slices.Equal(ex.Labels, ex.IDs) {
					t.Errorf("text %q: ids %v labels %v, want both %v", fx.Cases[i].Text, ex.IDs, ex.Labels, fx.Cases[i].IDsWithSpecial)
				}
			}
			ds, err = data.Load(writeJSONL(t, pcLines), tok, data.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for k, ex := range ds.Examples {
				prompt, completion := fx.Cases[textCases[2*k]], fx.Cases[textCases[2*k+1]]
				wantIDs := slices.Concat(prompt.IDsWithSpecial, completion.IDs, []int{eos})
				wantLabels := slices.Concat(slices.Repeat([]int{data.IgnoreIndex}, len(prompt.IDsWithSpecial)), completion.IDs, []int{eos})
				if !slices.Equal(ex.IDs, int32s(wantIDs)) || !slices.Equal(ex.Labels, int32s(wantLabels)) || ex.PromptLen != len(prompt.IDsWithSpecial) {
					t.Errorf("prompt %q completion %q:\n ids %v\nwant %v\n labels %v\nwant %v", prompt.Text, completion.Text, ex.IDs, wantIDs, ex.Labels, wantLabels)
				}
			}
		})
	}
}

func intsOf(ids []int32) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// TestRealTokenizerWithoutChatTemplate: Llama 2's tokenizer files have no chat
// template, so a messages file is refused as a whole, while the other formats
// load (with its BOS and EOS).
func TestRealTokenizerWithoutChatTemplate(t *testing.T) {
	tok, _ := loadReal(t, "llama2")
	_, err := data.Load(filepath.Join("testdata", "messages.jsonl"), tok, data.Options{SkipBadLines: true})
	if err == nil || !strings.Contains(err.Error(), "needs a chat template") {
		t.Errorf("messages with Llama 2: error %v, want a missing chat template", err)
	}
	ds, err := data.Load(filepath.Join("testdata", "prompt_completion.jsonl"), tok, data.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range ds.Examples {
		// <s> = 1 and </s> = 2 in the Llama 2 vocabulary.
		if ex.IDs[0] != 1 || ex.IDs[len(ex.IDs)-1] != 2 || ex.Labels[len(ex.IDs)-1] != 2 || ex.Labels[ex.PromptLen-1] != data.IgnoreIndex {
			t.Errorf("line %d: ids %v labels %v", ex.Line, ex.IDs, ex.Labels)
		}
	}
}
