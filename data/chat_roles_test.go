package data_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/tokenizer"
)

// The byte-level test tokenizer's template renders user and assistant turns
// only (testdata/tokenizers/bytes/tokenizer_config.json): a message with a
// mistyped role vanishes from its text, and the loader must say so.
func TestMessagesWithAnUnrenderedRole(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join("..", "testdata", "tokenizers", "bytes"))
	if err != nil {
		t.Fatal(err)
	}
	ok := map[string]any{"messages": []map[string]string{{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}}}
	typo := map[string]any{"messages": []map[string]string{{"role": "usr", "content": "3+3?"}, {"role": "assistant", "content": "6"}}}
	// A system prompt this template drops on purpose is the template's choice.
	system := map[string]any{"messages": []map[string]string{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}}}
	if _, err := data.Load(writeJSONL(t, []any{ok, system}), tok, data.Options{}); err != nil {
		t.Fatalf("known roles: %v", err)
	}
	_, err = data.Load(writeJSONL(t, []any{ok, typo}), tok, data.Options{})
	if err == nil || !strings.Contains(err.Error(), ":2:") || !strings.Contains(err.Error(), `role "usr"`) {
		t.Errorf("mistyped role on line 2: got %v, want an error naming line 2 and the role", err)
	}
}
