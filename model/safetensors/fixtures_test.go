package safetensors

import (
	"os"
	"path/filepath"
	"testing"
)

// fixturesDir finds ../shared/fixtures beside the repository root by walking
// up from the test's working directory, so the tests run both in the
// development checkout and in CI's clone with shared/ copied beside it.
func fixturesDir(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for dir := wd; ; {
		candidate := filepath.Join(dir, "..", "shared", "fixtures")
		if st, err := os.Stat(candidate); err == nil && st.IsDir() {
			return filepath.Clean(candidate)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("fixtures not found: no ../shared/fixtures beside any parent of %s; the shared folder must sit next to the repository root", wd)
		}
		dir = parent
	}
}

// fixtureModel is the path of model.safetensors in a fixture, e.g.
// fixtureModel(t, "llama-gqa", "model-bf16").
func fixtureModel(t *testing.T, name, variant string) string {
	t.Helper()
	return filepath.Join(fixturesDir(t), "hf", name, variant, SingleFileName)
}
