package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// eval's wrong inputs: usage errors exit 2, the rest 1 with the file named,
// before the model is loaded where possible, and a failed run leaves an
// existing --out file as it was.
func TestEvalRejectsBadInput(t *testing.T) {
	modelDir := modelWithTokenizer(t)
	dir := t.TempDir()
	results := filepath.Join(dir, "results.jsonl")
	os.WriteFile(results, []byte("old results\n"), 0o644)
	missing := filepath.Join(dir, "missing.jsonl")
	// The fixture model has max_position_embeddings 128; these examples are longer.
	long := filepath.Join(dir, "long.jsonl")
	writeLines(t, long, map[string]string{"prompt": strings.Repeat("a", 150), "completion": "b"})

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--data", long}, 2, "--model"},
		{[]string{"--model", modelDir}, 2, "--data"},
		{[]string{"--model", modelDir, "--data", missing, "--metric", "exact-match", "--out", results}, 1, missing},
		{[]string{"--model", modelDir, "--data", dir}, 1, "is a directory"},
		{[]string{"--model", modelDir, "--data", long}, 1, "max_position_embeddings 128"},
	} {
		code, stdout, stderr := run(t, append([]string{"eval"}, c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("eval %v: exit %d, stderr %q; want exit %d naming %q", c.args, code, stderr, c.code, c.want)
		}
		if c.want == missing && strings.Contains(stdout, "adapter:") {
			t.Errorf("eval %v: loaded the model before checking --data", c.args)
		}
	}
	if raw, _ := os.ReadFile(results); string(raw) != "old results\n" {
		t.Errorf("a failed eval changed --out: %q", raw)
	}
}
