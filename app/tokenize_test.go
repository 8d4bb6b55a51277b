package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/tokenizer"

	"github.com/sparselora/sparselora/internal/fixtures"
)

func TestTokenizeCommandMatchesHF(t *testing.T) {
	for _, name := range []string{"llama2", "qwen3"} {
		dir := fixtures.Tokenizer(t, name)
		fx := fixtures.LoadTokenizerCases(t, name)
		// Input: every case as text (with and without special tokens) and as ids, then every
		// chat case; want: the fixture's outputs in the same order.
		var in bytes.Buffer
		type want struct {
			ids  []int
			text *string
		}
		var wants []want
		line := func(v any) {
			b, _ := json.Marshal(v)
			in.Write(b)
			in.WriteByte('\n')
		}
		for i := range fx.Cases {
			c := &fx.Cases[i]
			line(map[string]any{"text": c.Text})
			wants = append(wants, want{ids: c.IDsWithSpecial})
			line(map[string]any{"text": c.Text, "add_special_tokens": false})
			wants = append(wants, want{ids: c.IDs})
			line(map[string]any{"ids": c.IDs})
			wants = append(wants, want{text: &c.Decoded})
		}
		in.WriteString("\n") // blank lines are skipped
		for i := range fx.Chat {
			c := &fx.Chat[i]
			line(map[string]any{"messages": c.Messages, "add_generation_prompt": c.AddGenerationPrompt})
			wants = append(wants, want{ids: c.IDs, text: &c.Text})
		}
		file := filepath.Join(t.TempDir(), "in.jsonl")
		if err := os.WriteFile(file, in.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := run(t, "tokenize", "--tokenizer", dir, file)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != len(wants) {
			t.Fatalf("%s: %d output lines, want %d", name, len(lines), len(wants))
		}
		for i, l := range lines {
			var got struct {
				IDs  []int   `json:"ids"`
				Text *string `json:"text"`
			}
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatalf("%s line %d: %v: %s", name, i+1, err, l)
			}
			w := wants[i]
			if w.ids != nil && !slices.Equal(got.IDs, w.ids) {
				t.Errorf("%s line %d: ids %v, want %v", name, i+1, got.IDs, w.ids)
			}
			if w.text != nil && (got.Text == nil || *got.Text != *w.text) {
				t.Errorf("%s line %d: text %v, want %q", name, i+1, got.Text, *w.text)
			}
		}
	}
}

func TestTokenizeCommandBadInput(t *testing.T) {
	dir := fixtures.Tokenizer(t, "qwen3")
	file := filepath.Join(t.TempDir(), "bad.jsonl")
	body := "{\"text\": \"ok\"}\n\n{\"text\": \"fine\", \"add_special_tokens\": false}\n{\"text\": 5}\n{\"text\": \"never reached\"}\n"
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "tokenize", "--tokenizer", dir, file)
	if code != 1 || !strings.Contains(stderr, file+":4:") || !strings.Contains(stderr, `"text"`) {
		t.Errorf("malformed line 4: exit %d, stderr %q; want exit 1 naming %s:4", code, stderr, file)
	}
	if n := strings.Count(stdout, "\n"); n != 2 {
		t.Errorf("lines before the bad one: %d outputs, want 2", n)
	}
	// The other malformed lines go through the stream directly, so the tokenizer loads once.
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ line, want string }{
		{`not json`, "not a JSON object"},
		{`[1, 2]`, "not a JSON object: got a JSON array"},
		{`"text"`, "not a JSON object: got a JSON string"},
		{`{"text": "a", "ids": [1]}`, "exactly one of"},
		{`{"ids": [-1]}`, "out of range"},
		{`{"ids": [1], "add_special_tokens": true}`, `unexpected field "add_special_tokens"`},
		{`{"messages": {"role": "user"}}`, "messages"},
		{`{"messages": [], "add_generation_prompt": "yes"}`, "add_generation_prompt"},
	} {
		var out bytes.Buffer
		in := strings.NewReader("{\"ids\": [1, 2]}\n" + tc.line + "\n")
		err := tokenizeStream(context.Background(), tok, in, "in.jsonl", &out)
		if err == nil || !strings.Contains(err.Error(), "in.jsonl:2:") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v; want an error naming in.jsonl:2 and %q", tc.line, err, tc.want)
		}
	}
	if code, _, _ := run(t, "tokenize", "--tokenizer", dir, file, "extra"); code != 2 {
		t.Errorf("stray argument: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "tokenize", file); code != 2 {
		t.Errorf("missing --tokenizer: exit %d, want 2", code)
	}
	if code, _, stderr := run(t, "tokenize", "--tokenizer", t.TempDir(), file); code != 1 || !strings.Contains(stderr, "tokenizer.json") {
		t.Errorf("directory without tokenizer.json: exit %d, stderr %q", code, stderr)
	}
}
