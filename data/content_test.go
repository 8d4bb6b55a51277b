package data

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// Invalid UTF-8 in a line is an error naming FILE:LINE (encoding/json would
// silently read it as U+FFFD), or a skipped and listed line.
func TestInvalidUTF8IsALineError(t *testing.T) {
	content := `{"text": "ab"}` + "\n" + "{\"text\": \"a\xffb\"}\n" + `{"text": "ba"}` + "\n"
	_, err := load(t, content, &fakeTok{}, Options{})
	if err == nil || !strings.Contains(err.Error(), "f.jsonl:2") || !strings.Contains(err.Error(), "UTF-8") || !strings.Contains(err.Error(), "byte 12") {
		t.Fatalf("error %v; want f.jsonl:2, invalid UTF-8 at byte 12", err)
	}
	ds, err := load(t, content, &fakeTok{}, Options{SkipBadLines: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 2 || ds.Skipped != 1 || len(ds.SkipErrors) != 1 || !strings.Contains(ds.SkipErrors[0].Error(), "f.jsonl:2: invalid UTF-8") {
		t.Errorf("%d examples, %d skipped %v; want 2 kept and line 2 listed", len(ds.Examples), ds.Skipped, ds.SkipErrors)
	}
}

// A dataset records its content's size and hash, as read.
func TestDatasetIdentifiesItsContent(t *testing.T) {
	content := "\uFEFF" + `{"text": "ab"}` + "\r\n" + `{"text": "ba"}`
	ds, err := load(t, content, &fakeTok{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	if ds.Bytes != int64(len(content)) || ds.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("bytes %d sha256 %s; want %d %x", ds.Bytes, ds.SHA256, len(content), sum)
	}
	edited, err := load(t, strings.Replace(content, "ba", "bb", 1), &fakeTok{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if edited.Bytes != ds.Bytes || edited.SHA256 == ds.SHA256 {
		t.Errorf("an edit of the same size is not told apart: %s", edited.SHA256)
	}
}
