package tokenizer

import (
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/dlclark/regexp2"
)

// TestFastSplitMatchesRegex compares the hand-written split matchers with regexp2 running the
// original patterns, on random strings over characters that exercise every branch.
func TestFastSplitMatchesRegex(t *testing.T) {
	alphabet := []string{"a", "Z", "é", "日", "ß", "S", "T", "R", "E", "L", "V", "M", "D", "s", "t", "r", "e",
		"v", "l", "m", "d", "'", "0", "7", "٣", "½", " ", " ", " ", "\t", "\n", "\r", "\u00a0", "\u3000",
		"\u2028", ".", ",", "(", "😀", "\u0301", "\u200d", "_", "-", "İ", "\u212a", "ſ", "\xff", "\xe3\x81"}
	rng := rand.New(rand.NewSource(1))
	for _, expr := range []string{llama3Pattern, qwen2Pattern, gpt2Pattern} {
		re := regexp2.MustCompile(expr, regexp2.None)
		slow := &pattern{re: re}
		fast := &pattern{fast: fastMatcher(expr)}
		if fast.fast == nil {
			t.Fatalf("no fast matcher for %s", expr)
		}
		for n := 0; n < 4000; n++ {
			var b strings.Builder
			for k := rng.Intn(24); k >= 0; k-- {
				b.WriteString(alphabet[rng.Intn(len(alphabet))])
			}
			s := b.String()
			want, got := slow.findAll(s), fast.findAll(s)
			if !slices.Equal(want, got) {
				t.Fatalf("pattern %s on %q:\n regexp2 %v\n    fast %v", expr, s, want, got)
			}
		}
	}
}
