package predictor

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestProgressPlainLinesOffTerminal(t *testing.T) {
	var b bytes.Buffer
	p := Progress(&b, "SVD", 10) // a buffer is not a terminal
	for i := 0; i <= 20; i++ {
		p(i, 20)
	}
	p(20, 20) // a repeated final call prints the final line again, nothing else
	got := b.String()
	if strings.ContainsRune(got, '\r') {
		t.Errorf("carriage return in non-terminal output %q", got)
	}
	// One line per tenth of the work: 0, 2, 4, ... 20 of 20, then the repeat.
	want := "SVD: 0/20\nSVD: 2/20\nSVD: 4/20\nSVD: 6/20\nSVD: 8/20\nSVD: 10/20\nSVD: 12/20\nSVD: 14/20\nSVD: 16/20\nSVD: 18/20\nSVD: 20/20\nSVD: 20/20\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestProgressBarOnTerminal(t *testing.T) {
	var b bytes.Buffer
	p := progressFor(&b, "SVD", 10, true)
	p(3, 12)
	if got, want := b.String(), "\rSVD [##........]  3/12"; got != want {
		t.Errorf("terminal progress %q, want the in-place bar %q", got, want)
	}
	// A regular file is not a terminal.
	f, err := os.Create(t.TempDir() + "/log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("a regular file counts as a terminal")
	}
}
