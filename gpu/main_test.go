package gpu_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// testDevice is shared by the package's tests: creating a device on lavapipe
// takes a noticeable fraction of a second.
var testDevice *gpu.Device

func TestMain(m *testing.M) { os.Exit(gputest.Main(m, &testDevice)) }

var ctx = context.Background()

// reductionDevices returns the test device and, where the adapter has the
// subgroups feature, a second device with the feature the other way round,
// so that a test of the prelude's reductions covers both of their paths
// whatever the tests' device is (gputest.NoSubgroupsEnv). The second device
// closes when the test ends.
func reductionDevices(t *testing.T) []*gpu.Device {
	t.Helper()
	if !slices.Contains(testDevice.Info.Features, "subgroups") {
		return []*gpu.Device{testDevice}
	}
	in, err := gpu.NewInstance()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close)
	opts, err := gputest.Options()
	if err != nil {
		t.Fatal(err)
	}
	opts.NoSubgroups = !opts.NoSubgroups
	other, err := in.OpenDevice(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	if other.HasSubgroups == testDevice.HasSubgroups {
		// Legitimate only where the adapter forms subgroups otherwise than the
		// reductions assume.
		for _, d := range []*gpu.Device{testDevice, other} {
			if strings.HasPrefix(d.SubgroupsUnused, "subgroups laid out otherwise") {
				t.Logf("only the workgroup-tree reductions: %s", d.SubgroupsUnused)
				return []*gpu.Device{testDevice}
			}
		}
		t.Fatalf("a device opened with NoSubgroups %v has HasSubgroups %v, as the test device (%q, %q)",
			opts.NoSubgroups, other.HasSubgroups, testDevice.SubgroupsUnused, other.SubgroupsUnused)
	}
	return []*gpu.Device{testDevice, other}
}
