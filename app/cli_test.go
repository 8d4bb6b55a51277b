package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestHelpOnEveryCommand(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"devices", "--help"}, {"bench", "--help"}, {"bench", "gemm", "--help"}} {
		code, out, errOut := run(t, args...)
		if code != 0 || !strings.Contains(out, "usage: sparselora") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	if code, _, errOut := run(t, "frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := run(t, "bench", "gemm", "--no-such-flag"); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
}

func TestDevicesListsARealAdapter(t *testing.T) {
	code, out, errOut := run(t, "devices", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var listing struct {
		Adapters []struct {
			Device, Backend, Type string
		}
	}
	if err := json.Unmarshal([]byte(out), &listing); err != nil {
		t.Fatalf("devices --json: %v\n%s", err, out)
	}
	real := 0
	for _, a := range listing.Adapters {
		if a.Backend != "Null" {
			real++
		}
	}
	if real == 0 {
		t.Fatalf("no usable adapter listed: %s", out)
	}
	code, out, _ = run(t, "devices")
	if code != 0 || !strings.Contains(out, "BACKEND") || !strings.Contains(out, listing.Adapters[0].Device) {
		t.Errorf("table output (exit %d):\n%s", code, out)
	}
}

// With the Vulkan loader pointed at no driver, Dawn offers only its Null
// adapter: devices must fail and say how to fix it. The Vulkan loader reads its
// environment once per process, so this runs the test binary again.
func TestDevicesRefusesNullAdapter(t *testing.T) {
	if os.Getenv("SPARSELORA_NULL_ONLY_CHILD") == "1" {
		code, _, errOut := run(t, "devices")
		os.Stderr.WriteString(errOut)
		os.Exit(code)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDevicesRefusesNullAdapter$")
	cmd.Env = append(os.Environ(), "SPARSELORA_NULL_ONLY_CHILD=1",
		"VK_DRIVER_FILES="+filepath.Join(t.TempDir(), "none.json"), "VK_ICD_FILENAMES="+filepath.Join(t.TempDir(), "none.json"))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("devices succeeded with no Vulkan driver:\n%s", out)
	}
	if !strings.Contains(string(out), "Null backend") || !strings.Contains(string(out), "mesa-vulkan-drivers") {
		t.Errorf("the error does not name the problem and the fix:\n%s", out)
	}
}

func TestBenchGemmWritesJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gemm.json")
	code, out, errOut := run(t, "bench", "gemm", "--shapes", "33x17x9", "--gather", "m=0.5,n=0.5,k=0.5",
		"--bf16", "--reps", "2", "--json", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "gathered") || !strings.Contains(out, "TFLOP/s") {
		t.Errorf("table:\n%s", out)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Adapter struct{ Device string }
		Results []struct {
			Variant  string
			MedianMS float64 `json:"median_ms"`
			UsefulM  int     `json:"useful_m"`
		}
	}
	if err := json.Unmarshal(raw, &report); err != nil {
		t.Fatal(err)
	}
	if report.Adapter.Device == "" || len(report.Results) != 2 || report.Results[1].UsefulM != 16 || !(report.Results[0].MedianMS > 0) {
		t.Errorf("report: %+v", report)
	}
	for _, bad := range [][]string{{"--shapes", "3x4"}, {"--gather", "q=0.5"}, {"--gather", "m=2"}, {"--layout", "xy"}, {"--tile", "huge"}} {
		if code, _, _ := run(t, append([]string{"bench", "gemm", "--json", ""}, bad...)...); code != 1 {
			t.Errorf("%v: exit %d, want 1", bad, code)
		}
	}
}
