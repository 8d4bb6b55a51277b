package safetensors

import (
	"path/filepath"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
)

func fixturesDir(t *testing.T) string { return fixtures.Dir(t) }

// fixtureModel is the path of model.safetensors in a fixture, e.g.
// fixtureModel(t, "llama-gqa", "model-bf16").
func fixtureModel(t *testing.T, name, variant string) string {
	t.Helper()
	return filepath.Join(fixturesDir(t), "hf", name, variant, SingleFileName)
}
