package app

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPromptMessagesDropsTheAnswer(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{`[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]`, `[{"role":"user","content":"2+2?"}]`, ""},
		{`[{"role":"system","content":"s"},{"role":"user","content":"u"}]`, `[{"role":"system","content":"s"},{"role":"user","content":"u"}]`, ""},
		{`[]`, "", "empty"},
		{`[{"role":"assistant","content":"4"}]`, "", "no prompt"},
		{`{"role":"user"}`, "", "want an array"},
	} {
		got, err := promptMessages(json.RawMessage(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %s, %v; want an error mentioning %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || string(got) != c.want {
			t.Errorf("%s: got %s, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestGenerateInputs(t *testing.T) {
	modelDir := modelWithTokenizer(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.jsonl")
	os.WriteFile(empty, []byte("\n\n"), 0o644)
	missing := filepath.Join(dir, "missing.jsonl")

	if code, _, stderr := run(t, "generate", "--prompt", "x"); code != 2 || !strings.Contains(stderr, "--model") {
		t.Errorf("no --model: exit %d, %q; want 2", code, stderr)
	}
	code, stdout, stderr := run(t, "generate", "--model", modelDir, "--data", missing)
	if code != 1 || !strings.Contains(stderr, missing) || strings.Contains(stderr, "adapter:") {
		t.Errorf("missing --data: exit %d, %q; want 1 naming the file before loading the model\n%s", code, stderr, stdout)
	}
	if code, _, stderr := run(t, "generate", "--model", modelDir, "--data", empty, "--max-new-tokens", "1"); code != 1 || !strings.Contains(stderr, "no prompts") {
		t.Errorf("blank --data: exit %d, %q; want 1, no prompts", code, stderr)
	}
	// An explicit empty prompt completes from BOS (it is not "no prompt", which reads stdin).
	code, stdout, stderr = run(t, "generate", "--model", modelDir, "--prompt", "", "--max-new-tokens", "1")
	if code != 0 || stdout == "" {
		t.Errorf(`--prompt "": exit %d, stdout %q, stderr %q; want one completion`, code, stdout, stderr)
	}
	// More new tokens than the fixture model's 128 positions: said, not silently cut.
	if _, _, stderr := run(t, "generate", "--model", modelDir, "--prompt", "a", "--max-new-tokens", "200"); !strings.Contains(stderr, "128 positions") {
		t.Errorf("--max-new-tokens 200 on a 128-position model: no note in %q", stderr)
	}
}

func TestCheckAdapterDirExplainsMixUps(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	peft := filepath.Join(dir, "peft")
	other := filepath.Join(dir, "other")
	for _, d := range []string{full, peft, other} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(full, "config.json"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(peft, "adapter_config.json"), []byte("{}"), 0o644)
	file := filepath.Join(dir, "data.jsonl")
	os.WriteFile(file, nil, 0o644)
	for _, c := range []struct{ dir, want string }{
		{"", ""}, {peft, ""},
		{full, "full model checkpoint"}, {other, "no adapter_config.json"}, {file, "is a file"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		err := checkAdapterDir(c.dir)
		if (c.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("checkAdapterDir(%q) = %v, want %q", c.dir, err, c.want)
		}
	}
	// merge runs the same check before any work.
	if code, _, stderr := run(t, "merge", "--model", full, "--adapter", full, "--out", filepath.Join(dir, "out")); code != 1 || !strings.Contains(stderr, "full model checkpoint") {
		t.Errorf("merge --adapter FULL: exit %d, %q", code, stderr)
	}
}
