package app

import (
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

func TestDevicesGPUClassFeatures(t *testing.T) {
	for _, c := range []struct {
		features []string
		want     string
	}{
		{nil, "shader-f16 no (no kernel uses it); subgroups no (used for " + gpu.FeatureUse("subgroups") +
			"); chromium-experimental-subgroup-matrix no (no kernel uses it)"},
		{[]string{"timestamp-query", "subgroups", "shader-f16"}, "shader-f16 yes (no kernel uses it); subgroups yes (used for " +
			gpu.FeatureUse("subgroups") + "); chromium-experimental-subgroup-matrix no (no kernel uses it)"},
		{[]string{"chromium-experimental-subgroup-matrix"}, "shader-f16 no (no kernel uses it); subgroups no (used for " +
			gpu.FeatureUse("subgroups") + "); chromium-experimental-subgroup-matrix yes (no kernel uses it)"},
	} {
		if got := gpuClassFeatures(gpu.AdapterInfo{Features: c.features}); got != c.want {
			t.Errorf("features %v: %q, want %q", c.features, got, c.want)
		}
	}
}
