package app

import (
	"strings"
	"testing"
)

// bench's own usage: every subcommand listed, a wrong one is a usage error (2)
// on stderr.
func TestBenchUsage(t *testing.T) {
	code, stdout, _ := run(t, "bench", "--help")
	if code != 0 {
		t.Errorf("bench --help: exit %d", code)
	}
	for _, sub := range []string{"gemm", "step", "report"} {
		if !strings.Contains(stdout, "  "+sub+" ") {
			t.Errorf("bench --help does not list %q:\n%s", sub, stdout)
		}
	}
	code, stdout, stderr := run(t, "bench", "nope")
	if code != 2 || !strings.Contains(stderr, `unknown benchmark "nope"`) || !strings.Contains(stderr, "report") || stdout != "" {
		t.Errorf("bench nope: exit %d, stdout %q, stderr %q; want 2 with the usage on stderr", code, stdout, stderr)
	}
	if code, stdout, stderr := run(t, "bench"); code != 2 || stdout != "" || !strings.Contains(stderr, "usage:") {
		t.Errorf("bench: exit %d, stdout %q, stderr %q; want 2 with the usage on stderr", code, stdout, stderr)
	}
}
