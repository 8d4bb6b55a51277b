package lora

import (
	"os"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// testDevice is shared by the package's tests (see gputest.Main).
var testDevice *gpu.Device

func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &testDevice)) }
