package app

import (
	"bytes"
	"strings"
	"testing"
)

// TestProgressPlainLines checks that off a terminal progress prints one line
// per tenth of the work and no carriage return.
func TestProgressPlainLines(t *testing.T) {
	var b bytes.Buffer
	p := progressFor(&b, "SVD estimator", false)
	for i := 0; i <= 40; i++ {
		p(i, 40)
	}
	if strings.Contains(b.String(), "\r") {
		t.Fatalf("carriage return off a terminal: %q", b.String())
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 11 || lines[0] != "SVD estimator: 0/40" || lines[10] != "SVD estimator: 40/40" {
		t.Errorf("got %d lines %q, want 11 from 0/40 to 40/40", len(lines), lines)
	}
}
