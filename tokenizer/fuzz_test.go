package tokenizer

import (
	"encoding/json"
	"regexp"
	"testing"
	"unicode/utf8"
)

// Fuzz targets. Their seed corpora (testdata/fuzz/<name>/) run as ordinary tests; run
// `go test -fuzz FuzzLoad ./tokenizer/` to search further. Inputs are size-bounded so a case
// cannot ask for unbounded work.

const (
	maxFuzzTokenizerJSON = 16 << 10
	maxFuzzTemplate      = 8 << 10
	maxFuzzMessages      = 4 << 10
)

var fuzzTexts = []string{"", "Hello world", " <s> x</s>  ", "naïve 日本語 😀\n\t 12345", "\xff\xfe bad utf8"}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzTokenizerJSON {
			t.Skip("input too large")
		}
		tok, err := parseTokenizerJSON(data)
		if err != nil {
			return
		}
		for _, text := range fuzzTexts {
			for _, special := range []bool{false, true} {
				ids := tok.Encode(text, special)
				for _, id := range ids {
					if id < 0 || id >= tok.VocabSize() {
						t.Fatalf("Encode(%q) gave id %d outside [0, %d)", text, id, tok.VocabSize())
					}
				}
				decoded := tok.Decode(ids, false)
				_ = tok.Decode(ids, true)
				if !utf8.ValidString(decoded) {
					t.Fatalf("Decode gave invalid UTF-8 %q", decoded)
				}
			}
		}
	})
}

// bigNumber finds numerals that could make a template loop for long (range(99999)).
var bigNumber = regexp.MustCompile(`[0-9]{3,}`)

func FuzzChatTemplate(f *testing.F) {
	f.Add("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
		[]byte(`[{"role": "user", "content": "hi"}]`), true)
	f.Fuzz(func(t *testing.T, template string, messages []byte, addGenerationPrompt bool) {
		if len(template) > maxFuzzTemplate || len(messages) > maxFuzzMessages || bigNumber.MatchString(template) {
			t.Skip("input too large")
		}
		tok := &Tokenizer{specialNames: map[string]any{"bos_token": "<s>", "eos_token": "</s>"}}
		tok.setChatTemplate(template, "fuzz")
		out, err := tok.ApplyChatTemplate(json.RawMessage(messages), addGenerationPrompt)
		if err == nil && template != "" && !json.Valid(messages) {
			t.Fatalf("invalid messages JSON accepted, rendered %q", out)
		}
	})
}
