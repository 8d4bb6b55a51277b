package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/tokenizer"
)

// The built-in pipeline: corpus -> tokenizer -> task files that the data loader reads as
// prompt/completion examples with exact-match answers.
func TestDataCommands(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "corpus.jsonl")
	tokDir := filepath.Join(dir, "tok")
	if code, out, errOut := run(t, "data", "corpus", "--n", "400", "--seed", "2", "--out", corpus); code != 0 {
		t.Fatalf("corpus: exit %d: %s %s", code, out, errOut)
	}
	if code, out, errOut := run(t, "data", "tokenizer", "--corpus", corpus, "--vocab", "400", "--out", tokDir); code != 0 || !strings.Contains(out, "400 ids") {
		t.Fatalf("tokenizer: exit %d: %s %s", code, out, errOut)
	}
	tok, err := tokenizer.Load(tokDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"arith", "lookup"} {
		train := filepath.Join(dir, task+"-train.jsonl")
		eval := filepath.Join(dir, task+"-eval.jsonl")
		if code, out, errOut := run(t, "data", "synth", task, "--n", "40", "--seed", "3", "--out", train, "--tokenizer", tokDir); code != 0 || !strings.Contains(out, "tokens per example") {
			t.Fatalf("synth %s: exit %d: %s %s", task, code, out, errOut)
		}
		if code, out, errOut := run(t, "data", "synth", "--split", "eval", task, "--n", "20", "--out", eval, "--seed", "3"); code != 0 {
			t.Fatalf("synth %s eval: exit %d: %s %s", task, code, out, errOut)
		}
		ds, err := data.Load(train, tok, data.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if ds.Format != data.FormatPromptCompletion || len(ds.Examples) != 40 {
			t.Fatalf("%s: format %s with %d examples", task, ds.Format, len(ds.Examples))
		}
		raw, err := os.ReadFile(train)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			var ex struct{ Prompt, Completion, Answer string }
			if err := json.Unmarshal([]byte(line), &ex); err != nil {
				t.Fatal(err)
			}
			got := ds.Examples[i]
			if got.Answer != ex.Answer || got.Prompt != ex.Prompt || got.PromptLen == 0 || got.PromptLen >= len(got.IDs) {
				t.Errorf("%s line %d: loaded answer %q prompt len %d of %d", task, i+1, got.Answer, got.PromptLen, len(got.IDs))
			}
		}
		// The eval file shares no prompt with the train file.
		evalRaw, err := os.ReadFile(eval)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(evalRaw)), "\n") {
			var ex struct{ Prompt string }
			json.Unmarshal([]byte(line), &ex)
			if strings.Contains(string(raw), mustJSON(t, ex.Prompt)) {
				t.Errorf("%s: eval prompt %q is in the train file", task, ex.Prompt)
			}
		}
	}
	// Same arguments, same bytes.
	again := filepath.Join(dir, "again.jsonl")
	run(t, "data", "synth", "arith", "--n", "40", "--seed", "3", "--out", again)
	a, _ := os.ReadFile(filepath.Join(dir, "arith-train.jsonl"))
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("the same synth arguments wrote different files")
	}
}

func mustJSON(t *testing.T, s string) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(buf.String())
}

func TestDataUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"nope"}, 2},
		{[]string{"synth", "arith"}, 2}, // no --out
		{[]string{"synth", "--out", filepath.Join(dir, "x.jsonl")}, 2},         // no NAME
		{[]string{"synth", "nope", "--out", filepath.Join(dir, "x.jsonl")}, 1}, // unknown task
		{[]string{"synth", "arith", "--split", "test", "--out", "-"}, 1},       // bad split
		{[]string{"synth", "arith", "--steps", "99", "--out", "-"}, 1},         // out of range
		{[]string{"tokenizer", "--out", dir}, 2},                               // no corpus
		{[]string{"tokenizer", "--corpus", filepath.Join(dir, "missing.jsonl"), "--out", dir}, 1},
		{[]string{"--help"}, 0},
	} {
		if code, out, errOut := run(t, append([]string{"data"}, c.args...)...); code != c.code {
			t.Errorf("data %v: exit %d, want %d (%s %s)", c.args, code, c.code, out, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.jsonl")); err == nil {
		t.Error("a failed synth left an output file")
	}
}

// Wrong values fail before anything is written, and a written data set is
// readable like any file the user makes (not owner-only like a temp file).
func TestDataSynthChecksBeforeWriting(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.jsonl")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"synth", "lookup", "--records", "0", "--out", out}, "--records 0"},
		{[]string{"synth", "arith", "--steps", "0", "--out", out}, "--steps 0"},
		{[]string{"synth", "lookup", "--n", "-5", "--out", out}, "--n -5"},
		{[]string{"synth", "lookup", "--n", "2000000000", "--out", out}, "--n 2000000000"},
		{[]string{"synth", "lookup", "--n", "3", "--tokenizer", filepath.Join(dir, "none"), "--out", out}, "--tokenizer"},
		{[]string{"synth", "lookup", "--n", "3", "--out", dir}, "is a directory"},
		{[]string{"corpus", "--n", "-1", "--out", out}, "--n -1"},
	} {
		code, _, errOut := run(t, append([]string{"data"}, c.args...)...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("data %v: exit %d, stderr %q; want exit 1 naming %q", c.args, code, errOut, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("data %v: failed but wrote %s", c.args, out)
		}
	}
	if code, _, errOut := run(t, "data", "synth", "lookup", "--n", "3", "--out", out); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm()&0o044 != 0o044 {
		t.Errorf("%s: mode %v (%v), want readable by group and others", out, st.Mode(), err)
	}
	empty := filepath.Join(dir, "empty.jsonl")
	os.WriteFile(empty, nil, 0o644)
	if code, _, errOut := run(t, "data", "tokenizer", "--corpus", empty, "--out", filepath.Join(dir, "tok")); code != 1 || !strings.Contains(errOut, "no texts") {
		t.Errorf("tokenizer on an empty corpus: exit %d, %q", code, errOut)
	}
}

// The corpus reader names the line it stopped at, also for an overlong line
// (the scanner's own message, "token too long", names neither).
func TestReadTrainingTextsNamesTheLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "corpus.jsonl")
	os.WriteFile(path, []byte("{\"text\": \"a\"}\n\n{\"text\": 5}\n"), 0o644)
	if _, err := readTrainingTexts(context.Background(), path); err == nil || !strings.Contains(err.Error(), path+":3:") {
		t.Errorf("bad line 3: got %v", err)
	}
	err := scanError(path, 7, bufio.ErrTooLong, 64<<20)
	if err == nil || !strings.Contains(err.Error(), path+":7: line longer than 64 MiB") {
		t.Errorf("overlong line: got %v", err)
	}
}
