package infer

import (
	"strings"
	"testing"
)

func TestFirstStop(t *testing.T) {
	for _, c := range []struct {
		text  string
		stops []string
		cut   int
		found bool
	}{
		{"The answer is 8.\nQ: next", []string{"\nQ:", "."}, 15, true},
		{"no stop here", []string{"###", ""}, 12, false},
		{"a###b##", []string{"##", "###"}, 1, true},
	} {
		cut, found := firstStop(c.text, c.stops)
		if cut != c.cut || found != c.found {
			t.Errorf("firstStop(%q, %q) = %d, %t; want %d, %t", c.text, c.stops, cut, found, c.cut, c.found)
		}
	}
}

// TestEmitStreamsOnlyNewText checks that streaming sends each piece once, in
// order, and sends nothing when decoding one more token rewrote earlier text.
func TestEmitStreamsOnlyNewText(t *testing.T) {
	var got []string
	on := func(s string) error { got = append(got, s); return nil }
	emitted := ""
	for _, text := range []string{"He", "Hello", "Hello", "Hello, w", "Help", "Hello, world"} {
		if err := emit(on, text, &emitted); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(got, "|") != "He|llo|, w|orld" || emitted != "Hello, world" {
		t.Errorf("streamed %q (emitted %q), want He|llo|, w|orld", got, emitted)
	}
}
