package model

import "github.com/sparselora/sparselora/gpu"

// SharedTestDevice is the package tests' device (set up by TestMain) for the
// external tests of package model_test, which may import packages that import
// model (lora).
func SharedTestDevice() *gpu.Device { return testDevice }
