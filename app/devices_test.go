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
		{nil, "shader-f16 no, subgroups no, chromium-experimental-subgroup-matrix no (no kernel uses them yet)"},
		{[]string{"timestamp-query", "subgroups", "shader-f16"}, "shader-f16 yes, subgroups yes, chromium-experimental-subgroup-matrix no (no kernel uses them yet)"},
		{[]string{"chromium-experimental-subgroup-matrix"}, "shader-f16 no, subgroups no, chromium-experimental-subgroup-matrix yes (no kernel uses them yet)"},
	} {
		if got := gpuClassFeatures(gpu.AdapterInfo{Features: c.features}); got != c.want {
			t.Errorf("features %v: %q, want %q", c.features, got, c.want)
		}
	}
}
