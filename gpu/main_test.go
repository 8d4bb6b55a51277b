package gpu_test

import (
	"context"
	"os"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// testDevice is shared by the package's tests: creating a device on lavapipe
// takes a noticeable fraction of a second.
var testDevice *gpu.Device

func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &testDevice)) }

var ctx = context.Background()
