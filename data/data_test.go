package data

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func load(t *testing.T, content string, tok Tokenizer, opts Options) (*Dataset, error) {
	t.Helper()
	return LoadReader(context.Background(), strings.NewReader(content), "f.jsonl", tok, opts)
}

func TestLoadFormats(t *testing.T) {
	const (
		alpacaNoInputAdd = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
			"### Instruction:\nAdd 1 and 2.\n\n### Response:\n"
		alpacaInputAdd = "Below is an instruction that describes a task, paired with an input that provides further context. " +
			"Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n"
	)
	tests := []struct {
		name, line string
		tok        *fakeTok
		opts       Options
		format     string
		want       Example
	}{
		{name: "text", line: `{"text": "ab"}`, format: FormatText,
			want: Example{IDs: ids(fakeBOS, "ab"), Labels: ids(fakeBOS, "ab")}},
		{name: "text with other keys", line: `{"text": "ab", "id": 7}`, format: FormatText,
			want: Example{IDs: ids(fakeBOS, "ab"), Labels: ids(fakeBOS, "ab")}},
		{name: "prompt completion", line: `{"prompt": "p?", "completion": "c"}`, format: FormatPromptCompletion,
			want: Example{IDs: ids(fakeBOS, "p?", "c", fakeEOS), Labels: cat(masked(3), ids("c", fakeEOS)),
				Prompt: "p?", PromptLen: 3, Answer: "c"}},
		{name: "completion already ends in EOS", line: `{"prompt": "p", "completion": "c<|end|>"}`, format: FormatPromptCompletion,
			want: Example{IDs: ids(fakeBOS, "p", "c", fakeEOS), Labels: cat(masked(2), ids("c", fakeEOS)),
				Prompt: "p", PromptLen: 2, Answer: "c<|end|>"}},
		{name: "prompt completion with answer", line: `{"prompt": "p", "completion": "c", "answer": "7"}`, format: FormatPromptCompletion,
			want: Example{IDs: ids(fakeBOS, "p", "c", fakeEOS), Labels: cat(masked(2), ids("c", fakeEOS)),
				Prompt: "p", PromptLen: 2, Answer: "7"}},
		{name: "alpaca without input", line: `{"instruction": "Add 1 and 2.", "output": "3"}`, format: FormatAlpaca,
			want: Example{IDs: ids(fakeBOS, alpacaNoInputAdd, "3", fakeEOS), Labels: cat(masked(1+len(alpacaNoInputAdd)), ids("3", fakeEOS)),
				Prompt: alpacaNoInputAdd, PromptLen: 1 + len(alpacaNoInputAdd), Answer: "3"}},
		{name: "alpaca empty input, numeric answer", line: `{"instruction": "Add 1 and 2.", "input": "", "output": "It is 3.", "answer": 3.0}`,
			format: FormatAlpaca,
			want: Example{IDs: ids(fakeBOS, alpacaNoInputAdd, "It is 3.", fakeEOS), Labels: cat(masked(1+len(alpacaNoInputAdd)), ids("It is 3.", fakeEOS)),
				Prompt: alpacaNoInputAdd, PromptLen: 1 + len(alpacaNoInputAdd), Answer: "3.0"}},
		{name: "alpaca with input and answer", line: `{"instruction": "Add.", "input": "1 2", "output": "3", "answer": "three"}`, format: FormatAlpaca,
			want: Example{IDs: ids(fakeBOS, alpacaInputAdd, "3", fakeEOS), Labels: cat(masked(1+len(alpacaInputAdd)), ids("3", fakeEOS)),
				Prompt: alpacaInputAdd, PromptLen: 1 + len(alpacaInputAdd), Answer: "three"}},
		{name: "messages", line: `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}`,
			format: FormatMessages,
			want: Example{IDs: ids(fakeBOS, fakeUser, "hi", fakeEOS, fakeAssistant, "yo", fakeEOS), Labels: cat(masked(6), ids("yo", fakeEOS)),
				Prompt: "<|bos|><|user|>hi<|end|><|assistant|>", PromptLen: 6, Answer: "yo"}},
		{name: "messages multi-turn with system and extra fields",
			line: `{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"},` +
				` {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], "answer": "D"}`,
			format: FormatMessages,
			want: Example{
				IDs: ids(fakeBOS, fakeSystem, "s", fakeEOS, fakeUser, "a", fakeEOS, fakeAssistant, "b", fakeEOS,
					fakeUser, "c", fakeEOS, fakeAssistant, "d", fakeEOS),
				Labels: cat(masked(8), ids("b", fakeEOS), masked(4), ids("d", fakeEOS)),
				Prompt: "<|bos|><|system|>s<|end|><|user|>a<|end|><|assistant|>b<|end|><|user|>c<|end|><|assistant|>", PromptLen: 14, Answer: "D"}},
		{name: "messages ending with a user turn, template always adds the generation prompt", tok: &fakeTok{template: templateAlwaysGen},
			line:   `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}`,
			format: FormatMessages,
			want: Example{
				IDs:    ids(fakeBOS, fakeUser, "a", fakeEOS, fakeAssistant, "b", fakeEOS, fakeUser, "c", fakeEOS, fakeAssistant),
				Labels: cat(masked(5), ids("b", fakeEOS), masked(4)),
				Prompt: "<|bos|><|user|>a<|end|><|assistant|>", PromptLen: 5, Answer: "b"}},
		{name: "messages, template always adds the generation prompt, trailing header not scored", tok: &fakeTok{template: templateAlwaysGen},
			line:   `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}`,
			format: FormatMessages,
			want: Example{
				IDs:    ids(fakeBOS, fakeUser, "a", fakeEOS, fakeAssistant, "b", fakeEOS, fakeAssistant),
				Labels: cat(masked(5), ids("b", fakeEOS), masked(1)),
				Prompt: "<|bos|><|user|>a<|end|><|assistant|>", PromptLen: 5, Answer: "b"}},
		{name: "messages, turns end with an end-of-turn token that is not EOS", tok: &fakeTok{template: templateLlama3Like},
			line:   `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}`,
			format: FormatMessages,
			want: Example{
				IDs:    ids(fakeBOS, fakeUser, "a", fakeEOT, fakeAssistant, "b", fakeEOT, fakeAssistant),
				Labels: cat(masked(5), ids("b", fakeEOT), masked(1)),
				Prompt: "<|bos|><|user|>a<|eot_id|><|assistant|>", PromptLen: 5, Answer: "b"}},
		{name: "messages, template renders the last assistant turn differently", tok: &fakeTok{template: templateThinkLast},
			line: `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},` +
				` {"role": "assistant", "content": "d"}]}`,
			format: FormatMessages,
			want: Example{
				IDs:    ids(fakeBOS, fakeUser, "a", fakeEOS, fakeAssistant, "b", fakeEOS, fakeUser, "c", fakeEOS, fakeAssistant, fakeThink, "d", fakeEOS),
				Labels: cat(masked(5), ids("b", fakeEOS), masked(4), ids(fakeThink, "d", fakeEOS)),
				Prompt: "<|bos|><|user|>a<|end|><|assistant|>b<|end|><|user|>c<|end|><|assistant|>", PromptLen: 11, Answer: "d"}},
		{name: "input_ids with labels", line: `{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}`, format: FormatTokenized,
			want: Example{IDs: ids(5, 6, 7, 8), Labels: ids(-100, -100, 7, 8)}},
		{name: "input_ids without labels", line: `{"input_ids": [5, 0, 7]}`, format: FormatTokenized, opts: Options{VocabSize: 8},
			want: Example{IDs: ids(5, 0, 7), Labels: ids(5, 0, 7)}},
		{name: "input_ids with null labels", line: `{"input_ids": [5, 6], "labels": null}`, format: FormatTokenized,
			want: Example{IDs: ids(5, 6), Labels: ids(5, 6)}},
		{name: "BOM and CRLF", line: "\uFEFF{\"text\": \"ab\"}\r\n", format: FormatText,
			want: Example{IDs: ids(fakeBOS, "ab"), Labels: ids(fakeBOS, "ab")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.tok
			if tok == nil {
				tok = &fakeTok{}
			}
			content := tc.line
			if !strings.HasSuffix(content, "\n") {
				content += "\n"
			}
			ds, err := load(t, content, tok, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if ds.Format != tc.format {
				t.Errorf("format %q, want %q", ds.Format, tc.format)
			}
			if len(ds.Examples) != 1 {
				t.Fatalf("%d examples, want 1", len(ds.Examples))
			}
			got, want := ds.Examples[0], tc.want
			want.Line = 1
			if !slices.Equal(got.IDs, want.IDs) {
				t.Errorf("ids\n got %v\nwant %v", got.IDs, want.IDs)
			}
			if !slices.Equal(got.Labels, want.Labels) {
				t.Errorf("labels\n got %v\nwant %v", got.Labels, want.Labels)
			}
			if got.Prompt != want.Prompt || got.PromptLen != want.PromptLen || got.Answer != want.Answer || got.Line != want.Line {
				t.Errorf("prompt %q len %d answer %q line %d, want %q %d %q %d",
					got.Prompt, got.PromptLen, got.Answer, got.Line, want.Prompt, want.PromptLen, want.Answer, want.Line)
			}
			if got.PromptLen > 0 && !slices.Equal(got.IDs[:got.PromptLen], toInt32Must(t, tok.Encode(got.Prompt, tc.format != FormatMessages))) {
				t.Errorf("IDs[:PromptLen] is not the encoded prompt")
			}
			if ds.Tokens != len(want.IDs) || ds.ScoredTokens != want.Targets() || ds.MaxLen != len(want.IDs) {
				t.Errorf("tokens %d scored %d maxlen %d", ds.Tokens, ds.ScoredTokens, ds.MaxLen)
			}
		})
	}
}

func toInt32Must(t *testing.T, in []int) []int32 {
	t.Helper()
	out, err := toInt32(in)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	const (
		text = `{"text": "ab"}` + "\n"
		pc   = `{"prompt": "p", "completion": "c"}` + "\n"
	)
	tests := []struct {
		name, content string
		tok           Tokenizer
		opts          Options
		want          string // the error must contain it
	}{
		{"malformed JSON", text + `{"text": "ab"` + "\n", nil, Options{}, "f.jsonl:2: malformed JSON"},
		{"empty line", text + text + "\n" + text, nil, Options{}, "f.jsonl:3: empty line"},
		{"whitespace line", "  \t\n", nil, Options{}, "f.jsonl:1: empty line"},
		{"not JSON", text + "not json\n", nil, Options{}, "f.jsonl:2: malformed JSON: invalid character"},
		{"null line", text + "null\n", nil, Options{}, "f.jsonl:2: want a JSON object, got null"},
		{"two objects", text + `{"text": "a"}{"text": "b"}` + "\n", nil, Options{}, "f.jsonl:2: malformed JSON"},
		{"not an object", text + `["text"]` + "\n", nil, Options{}, "f.jsonl:2: want a JSON object, got an array"},
		{"unknown format", `{"txt": "a"}` + "\n", nil, Options{}, "f.jsonl:1: no known format in keys [txt]"},
		{"missing field", pc + `{"prompt": "p"}` + "\n", nil, Options{}, `f.jsonl:2: missing field "completion"`},
		{"format change", pc + text, nil, Options{}, "f.jsonl:2: line is in format text but the file is in format prompt_completion (from line 1)"},
		{"empty text", text + `{"text": ""}` + "\n", nil, Options{}, `f.jsonl:2: field "text" is empty`},
		{"null text", `{"text": null}`, nil, Options{}, `f.jsonl:1: field "text" is null`},
		{"text is a number", `{"text": 5}`, nil, Options{}, `f.jsonl:1: field "text": want a string, got a number`},
		{"empty completion", `{"prompt": "p", "completion": ""}`, nil, Options{}, `f.jsonl:1: field "completion" is empty`},
		{"alpaca output empty", `{"instruction": "i", "output": ""}`, nil, Options{}, `f.jsonl:1: field "output" is empty`},
		{"alpaca input wrong type", `{"instruction": "i", "input": [], "output": "o"}`, nil, Options{}, `f.jsonl:1: field "input": want a string, got an array`},
		{"answer wrong type", `{"instruction": "i", "output": "o", "answer": {}}`, nil, Options{}, `f.jsonl:1: field "answer": want a string or a number`},
		{"input_ids float", `{"input_ids": [1, 2.5]}`, nil, Options{}, `f.jsonl:1: field "input_ids"[1]: want an integer, got 2.5`},
		{"input_ids quoted", `{"input_ids": [1, "2"]}`, nil, Options{}, `f.jsonl:1: field "input_ids"[1]: want an integer`},
		{"input_ids negative", `{"input_ids": [1, -100]}`, nil, Options{}, `f.jsonl:1: field "input_ids"[1] = -100: token ids are non-negative`},
		{"input_ids not an array", `{"input_ids": 3}`, nil, Options{}, `f.jsonl:1: field "input_ids": want an array of integers, got a number`},
		{"input_ids empty", `{"input_ids": []}`, nil, Options{}, `f.jsonl:1: field "input_ids" is empty`},
		{"input_ids huge", `{"input_ids": [1, 99999999999]}`, nil, Options{}, `too large`},
		{"input_ids beyond vocab", `{"input_ids": [1, 2]}` + "\n" + `{"input_ids": [1, 8]}`, nil, Options{VocabSize: 8},
			`f.jsonl:2: field "input_ids"[1] = 8: outside the vocabulary (size 8)`},
		{"labels beyond vocab", `{"input_ids": [1, 2], "labels": [1, 9]}`, nil, Options{VocabSize: 8}, `field "labels"[1] = 9: outside the vocabulary`},
		{"labels length", `{"input_ids": [1, 2, 3], "labels": [1, 2]}`, nil, Options{}, `f.jsonl:1: field "labels" has 2 entries but "input_ids" has 3`},
		{"labels bad negative", `{"input_ids": [1, 2], "labels": [-1, 2]}`, nil, Options{}, `field "labels"[0] = -1: labels are token ids or -100`},
		{"no scored token", `{"input_ids": [1, 2], "labels": [1, -100]}`, nil, Options{}, "f.jsonl:1: no scored token"},
		{"single token", `{"input_ids": [1, 2]}` + "\n" + `{"input_ids": [1]}`, nil, Options{}, "f.jsonl:2: no scored token"},
		{"nothing left after truncation", pc + `{"prompt": "long prompt", "completion": "c"}`, nil, Options{MaxSeqLen: 4},
			"f.jsonl:2: no scored token left after truncation to 4 tokens"},
		{"messages not an array", `{"messages": "hi"}`, nil, Options{}, `f.jsonl:1: field "messages": want an array`},
		{"messages empty", `{"messages": []}`, nil, Options{}, `f.jsonl:1: field "messages" is empty`},
		{"message not an object", `{"messages": [1]}`, nil, Options{}, "f.jsonl:1: messages[0]: want an object, got a number"},
		{"message without role", `{"messages": [{"content": "x"}]}`, nil, Options{}, `f.jsonl:1: messages[0]: missing field "role"`},
		{"message without content", `{"messages": [{"role": "user"}]}`, nil, Options{}, `f.jsonl:1: messages[0]: missing field "content"`},
		{"message content list", `{"messages": [{"role": "user", "content": [{"type": "text"}]}]}`, nil, Options{},
			`f.jsonl:1: messages[0]: field "content": want a string, got an array`},
		{"no assistant", `{"messages": [{"role": "user", "content": "x"}]}`, nil, Options{}, "f.jsonl:1: no assistant message"},
		{"template renders are not prefixes", `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}`,
			&fakeTok{template: templateCountHeader}, Options{}, "f.jsonl:1: messages[1]: the chat template's tokens up to this assistant turn"},
		{"template error", `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}`,
			&fakeTok{template: templateFails}, Options{}, "f.jsonl:1: chat template on messages[:2]: template exploded"},
		{"turn end not found", `{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},` +
			` {"role": "assistant", "content": "d"}]}`, &fakeTok{template: templateThinkLast, noEOS: true}, Options{},
			"f.jsonl:1: messages[1]: cannot locate the end of this assistant turn"},
		{"line too long", text + `{"text": "abcdefghijklmnopqrstuvwxyz"}` + "\n" + text, nil, Options{MaxLineBytes: 20}, "f.jsonl:2: line too long (over 20 bytes)"},
		{"empty file", "", nil, Options{}, "f.jsonl: no examples (empty file)"},
		// Setup errors are not about a line and are never skipped.
		{"text without tokenizer", text, noTokenizer, Options{SkipBadLines: true}, "format text needs a tokenizer"},
		{"completion without EOS", pc, &fakeTok{noEOS: true}, Options{SkipBadLines: true}, "the tokenizer has no EOS token"},
		{"messages without template", `{"messages": [{"role": "user", "content": "x"}]}`, &fakeTok{noTemplate: true}, Options{SkipBadLines: true},
			"needs a chat template"},
		{"all lines skipped", "{\n{\n", nil, Options{SkipBadLines: true}, "f.jsonl: no usable examples (2 lines skipped; first: f.jsonl:1: malformed JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.tok
			switch tok {
			case nil:
				tok = &fakeTok{}
			case noTokenizer:
				tok = nil
			}
			ds, err := load(t, tc.content, tok, tc.opts)
			if err == nil {
				t.Fatalf("no error (%d examples), want %q", len(ds.Examples), tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// noTokenizer marks a test case that passes a nil tokenizer.
var noTokenizer Tokenizer = &fakeTok{}

func TestLineErrorIsTyped(t *testing.T) {
	_, err := load(t, `{"text": "a"}`+"\n{\n", &fakeTok{}, Options{})
	var le *LineError
	if !errors.As(err, &le) || le.Line != 2 || le.File != "f.jsonl" {
		t.Fatalf("error %v: want a *LineError for f.jsonl line 2", err)
	}
}

func TestSkipBadLines(t *testing.T) {
	content := strings.Join([]string{
		`{"prompt": "p1", "completion": "c1"}`,
		`not json`,
		``,
		`{"prompt": "p4", "completion": "c4"}`,
		`{"text": "t"}`,
		`{"prompt": "p6", "completion": 6}`,
		`{"prompt": "a long prompt", "completion": "c7"}`,
		`{"prompt": "p8", "completion": "a long completion"}`,
		`{"prompt": "p9", "completion": "c9"}`,
	}, "\n")
	ds, err := load(t, content, &fakeTok{}, Options{SkipBadLines: true, MaxSeqLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	var lines []int
	for _, ex := range ds.Examples {
		lines = append(lines, ex.Line)
	}
	if want := []int{1, 4, 8, 9}; !slices.Equal(lines, want) {
		t.Errorf("kept lines %v, want %v", lines, want)
	}
	if ds.Skipped != 5 || len(ds.SkipErrors) != 5 {
		t.Errorf("skipped %d (%d errors kept), want 5", ds.Skipped, len(ds.SkipErrors))
	}
	if ds.Truncated != 1 {
		t.Errorf("truncated %d, want 1 (line 8)", ds.Truncated)
	}
	for i, wantLine := range []int{2, 3, 5, 6, 7} {
		var le *LineError
		if !errors.As(ds.SkipErrors[i], &le) || le.Line != wantLine {
			t.Errorf("skip error %d = %v, want line %d", i, ds.SkipErrors[i], wantLine)
		}
	}
	// Line 8: BOS p 8 (3 prompt tokens) + "a long completion" + EOS, cut to 8 tokens.
	ex := ds.Examples[2]
	if want := ids(fakeBOS, "p8", "a lon"); !slices.Equal(ex.IDs, want) {
		t.Errorf("truncated ids %v, want %v", ex.IDs, want)
	}
	if want := cat(masked(3), ids("a lon")); !slices.Equal(ex.Labels, want) {
		t.Errorf("truncated labels %v, want %v", ex.Labels, want)
	}
	wantTokens := 6 + 6 + 8 + 6 // BOS pN cN EOS each, and the truncated line
	if ds.Tokens != wantTokens || ds.MaxLen != 8 {
		t.Errorf("tokens %d maxlen %d, want %d 8", ds.Tokens, ds.MaxLen, wantTokens)
	}
	if wantScored := 3 + 3 + 5 + 3; ds.ScoredTokens != wantScored {
		t.Errorf("scored tokens %d, want %d", ds.ScoredTokens, wantScored)
	}
}

func TestFormatFromFirstValidLine(t *testing.T) {
	// With SkipBadLines, an unusable first line does not fix the format.
	ds, err := load(t, `{"prompt": "p", "completion": ""}`+"\n"+`{"text": "ab"}`+"\n", &fakeTok{}, Options{SkipBadLines: true})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Format != FormatText || len(ds.Examples) != 1 || ds.Skipped != 1 {
		t.Errorf("format %s, %d examples, %d skipped; want text, 1, 1", ds.Format, len(ds.Examples), ds.Skipped)
	}
}

func TestLongLinesWithinLimit(t *testing.T) {
	// A line longer than bufio's buffer but under the limit is read whole.
	long := strings.Repeat("x", 200_000)
	ds, err := load(t, `{"input_ids": [1, 2]}`+"\n"+`{"input_ids": [1, 2], "pad": "`+long+`"}`, &fakeTok{}, Options{MaxLineBytes: 300_000})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 2 {
		t.Fatalf("%d examples, want 2", len(ds.Examples))
	}
	ds, err = load(t, `{"input_ids": [1, 2], "pad": "`+long+`"}`+"\n"+`{"input_ids": [1, 2]}`, &fakeTok{},
		Options{MaxLineBytes: 100_000, SkipBadLines: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 1 || ds.Examples[0].Line != 2 || ds.Skipped != 1 {
		t.Errorf("after an over-long line: %d examples, skipped %d; want line 2 kept, 1 skipped", len(ds.Examples), ds.Skipped)
	}
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	content := strings.Repeat(`{"text": "a"}`+"\n", 1000)
	if _, err := LoadReader(ctx, strings.NewReader(content), "f.jsonl", &fakeTok{}, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// TestExampleFiles loads the example files the README points to.
func TestExampleFiles(t *testing.T) {
	files := map[string]string{
		"text.jsonl":              FormatText,
		"prompt_completion.jsonl": FormatPromptCompletion,
		"messages.jsonl":          FormatMessages,
		"alpaca.jsonl":            FormatAlpaca,
		"tokenized.jsonl":         FormatTokenized,
	}
	for name, format := range files {
		ds, err := Load(filepath.Join("testdata", name), &fakeTok{}, Options{})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if ds.Format != format || len(ds.Examples) < 3 || ds.Skipped != 0 {
			t.Errorf("%s: format %s, %d examples, %d skipped", name, ds.Format, len(ds.Examples), ds.Skipped)
		}
	}
	if _, err := Load(filepath.Join("testdata", "missing.jsonl"), &fakeTok{}, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: error %v, want os.ErrNotExist", err)
	}
}

// TestManyLines crosses the parallel chunks: line numbers, order and the
// first error must be those of the file.
func TestManyLines(t *testing.T) {
	var b strings.Builder
	const n = 3500
	for i := 1; i <= n; i++ {
		switch {
		case i <= 1500 && i%2 == 1: // the format is fixed by line 2
			b.WriteString("garbage\n")
		case i == 2600 || i == 2700:
			b.WriteString(`{"prompt": "p", "completion": 1}` + "\n")
		default:
			b.WriteString(`{"prompt": "p", "completion": "` + strconv.Itoa(i) + `"}` + "\n")
		}
	}
	for _, workers := range []int{1, 4} {
		ds, err := load(t, b.String(), &fakeTok{}, Options{SkipBadLines: true, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		if want := n - 750 - 2; len(ds.Examples) != want || ds.Skipped != 752 {
			t.Fatalf("workers %d: %d examples, %d skipped; want %d, 752", workers, len(ds.Examples), ds.Skipped, want)
		}
		for _, ex := range ds.Examples {
			if ex.Answer != strconv.Itoa(ex.Line) {
				t.Fatalf("workers %d: line %d holds the example of line %s", workers, ex.Line, ex.Answer)
			}
		}
		_, err = load(t, b.String()[len("garbage\n"):], &fakeTok{}, Options{Workers: workers})
		if err == nil || !strings.Contains(err.Error(), "f.jsonl:2:") {
			t.Errorf("workers %d: error %v, want one at line 2", workers, err)
		}
		cut := strings.Index(b.String(), `{"prompt": "p", "completion": "1502"}`)
		_, err = load(t, b.String()[cut:], &fakeTok{}, Options{Workers: workers})
		if err == nil || !strings.Contains(err.Error(), "f.jsonl:1099:") { // line 2600 of the full file
			t.Errorf("workers %d: error %v, want one at line 1099", workers, err)
		}
	}
}
