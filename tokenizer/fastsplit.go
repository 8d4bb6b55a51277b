package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the split patterns of the supported model families. A backtracking
// regex engine spends most of the encode time on them (regexp2 runs at ~3.5 MB/s on English);
// these scan each rune once. They implement the same leftmost-first alternation, greedy
// quantifiers and look-ahead as the regex (TestFastSplitMatchesRegex compares them with regexp2
// on random text), and are used only when a tokenizer.json pattern equals one of these strings.
const (
	// llama3Pattern: LLaMA-3 (numbers in groups of up to three digits).
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// qwen2Pattern: Qwen2/2.5/3 (single digits).
	qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// fastMatcher returns a matcher for a known pattern, or nil.
func fastMatcher(expr string) func(s string, i int) int {
	switch expr {
	case llama3Pattern:
		return func(s string, i int) int { return matchLlama3Family(s, i, 3) }
	case qwen2Pattern:
		return func(s string, i int) int { return matchLlama3Family(s, i, 1) }
	case gpt2Pattern:
		return matchGPT2
	}
	return nil
}

// fastFindAll applies a matcher at successive positions: the regex's non-overlapping,
// leftmost matches. match returns the end of the match at i, or -1.
func fastFindAll(s string, match func(s string, i int) int) [][2]int {
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		if end := match(s, i); end > i {
			out = append(out, [2]int{i, end})
			i = end
			continue
		}
		_, n := utf8.DecodeRuneInString(s[i:])
		i += n
	}
	return out
}

func runeAt(s string, i int) (rune, int) {
	if i >= len(s) {
		return -1, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

func isLetter(r rune) bool {
	if r < utf8.RuneSelf {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
	}
	return unicode.IsLetter(r)
}

func isNumber(r rune) bool {
	if r < utf8.RuneSelf {
		return '0' <= r && r <= '9'
	}
	return unicode.IsNumber(r)
}

func isSpace(r rune) bool { return r >= 0 && unicode.IsSpace(r) }

// isOther is [^\s\p{L}\p{N}].
func isOther(r rune) bool { return r >= 0 && !isSpace(r) && !isLetter(r) && !isNumber(r) }

// contraction matches 's|'t|'re|'ve|'m|'ll|'d at i (s[i] == '\”), case-insensitively if fold.
func contraction(s string, i int, fold bool) int {
	lower := func(j int) rune {
		r, _ := runeAt(s, j)
		if fold {
			r = unicode.ToLower(r)
		}
		return r
	}
	switch lower(i + 1) {
	case 's', 't', 'm', 'd':
		_, n := runeAt(s, i+1)
		return i + 1 + n
	case 'r', 'v', 'l':
		want := 'e'
		if lower(i+1) == 'l' {
			want = 'l'
		}
		_, n := runeAt(s, i+1)
		if lower(i+1+n) == want {
			_, m := runeAt(s, i+1+n)
			return i + 1 + n + m
		}
	}
	return -1
}

func scan(s string, i int, is func(rune) bool) int {
	for i < len(s) {
		r, n := runeAt(s, i)
		if !is(r) {
			break
		}
		i += n
	}
	return i
}

func matchLlama3Family(s string, i, maxDigits int) int {
	r0, n0 := runeAt(s, i)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r0 == '\'' {
		if end := contraction(s, i, true); end > 0 {
			return end
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if r0 != '\r' && r0 != '\n' && !isLetter(r0) && !isNumber(r0) {
		if r1, _ := runeAt(s, i+n0); isLetter(r1) {
			return scan(s, i+n0, isLetter)
		}
	}
	if isLetter(r0) {
		return scan(s, i, isLetter)
	}
	// \p{N}{1,maxDigits}
	if isNumber(r0) {
		j := i
		for k := 0; k < maxDigits; k++ {
			r, n := runeAt(s, j)
			if !isNumber(r) {
				break
			}
			j += n
		}
		return j
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	start := i
	if r0 == ' ' {
		if r1, _ := runeAt(s, i+1); isOther(r1) {
			start = i + 1
		}
	}
	if r, _ := runeAt(s, start); isOther(r) {
		j := scan(s, start, isOther)
		return scan(s, j, func(r rune) bool { return r == '\r' || r == '\n' })
	}
	if !isSpace(r0) {
		return -1
	}
	// \s*[\r\n]+ : up to and including the last \r or \n of the whitespace run.
	runEnd := scan(s, i, isSpace)
	lastNewline := -1
	for j := i; j < runEnd; {
		r, n := runeAt(s, j)
		if r == '\r' || r == '\n' {
			lastNewline = j + n
		}
		j += n
	}
	if lastNewline > 0 {
		return lastNewline
	}
	return spaceRun(s, i, runEnd)
}

// spaceRun is \s+(?!\S)|\s+ over the whitespace run [i, runEnd): a run followed by text gives
// its last whitespace character to that text.
func spaceRun(s string, i, runEnd int) int {
	if runEnd >= len(s) {
		return runEnd
	}
	_, lastN := utf8.DecodeLastRuneInString(s[i:runEnd])
	if runEnd-lastN > i {
		return runEnd - lastN
	}
	return runEnd
}

// matchGPT2 is 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+.
func matchGPT2(s string, i int) int {
	r0, _ := runeAt(s, i)
	if r0 == '\'' {
		if end := contraction(s, i, false); end > 0 {
			return end
		}
	}
	start := i
	r := r0
	if r0 == ' ' {
		start = i + 1
		r, _ = runeAt(s, start)
	}
	for _, class := range []func(rune) bool{isLetter, isNumber, isOther} {
		if class(r) {
			return scan(s, start, class)
		}
	}
	if !isSpace(r0) {
		return -1
	}
	return spaceRun(s, i, scan(s, i, isSpace))
}
