package tokenizer

import (
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
	"golang.org/x/text/unicode/norm"
)

// ---- normalizers ----

type normalizer interface{ normalize(s string) string }

type normalizerSequence []normalizer

func (seq normalizerSequence) normalize(s string) string {
	for _, n := range seq {
		s = n.normalize(s)
	}
	return s
}

// normalizeTracked normalizes s and reports whether the result no longer starts at the original
// text's first character (a stripped or deleted prefix): HF tracks offsets, and Metaspace's
// prepend_scheme "first" only prepends to a piece whose original offset is 0.
func normalizeTracked(n normalizer, s string) (string, bool) {
	shifted := false
	switch n := n.(type) {
	case normalizerSequence:
		for _, sub := range n {
			var sh bool
			s, sh = normalizeTracked(sub, s)
			shifted = shifted || sh
		}
		return s, shifted
	case stripNormalizer:
		r, _ := utf8.DecodeRuneInString(s)
		shifted = n.left && s != "" && unicode.IsSpace(r)
	case replaceNormalizer:
		if n.content == "" {
			if m := n.pattern.findAll(s); len(m) > 0 && m[0][0] == 0 {
				shifted = true
			}
		}
	}
	return n.normalize(s), shifted
}

type unicodeNormalizer struct{ form norm.Form }

func (u unicodeNormalizer) normalize(s string) string { return u.form.String(s) }

type prependNormalizer struct{ prefix string }

func (p prependNormalizer) normalize(s string) string {
	if s == "" {
		return s
	}
	return p.prefix + s
}

type appendNormalizer struct{ suffix string }

func (a appendNormalizer) normalize(s string) string {
	if s == "" {
		return s
	}
	return s + a.suffix
}

type replaceNormalizer struct {
	pattern *pattern
	content string
}

func (r replaceNormalizer) normalize(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range r.pattern.findAll(s) {
		b.WriteString(s[last:m[0]])
		b.WriteString(r.content)
		last = m[1]
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

type lowercaseNormalizer struct{}

func (lowercaseNormalizer) normalize(s string) string { return strings.ToLower(s) }

type stripNormalizer struct{ left, right bool }

func (st stripNormalizer) normalize(s string) string {
	if st.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if st.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// ---- patterns (Split, Replace) ----

// pattern is a literal string or a regular expression (Oniguruma syntax in HF; regexp2's .NET
// syntax is close enough for the look-aheads, \p{..} classes and (?i:..) groups tokenizers use).
type pattern struct {
	literal string
	re      *regexp2.Regexp
	fast    func(s string, i int) int // hand-written equivalent of re (fastsplit.go), or nil
}

// findAll returns the byte ranges of all non-overlapping, non-empty matches.
func (p *pattern) findAll(s string) [][2]int {
	if p.fast != nil {
		return fastFindAll(s, p.fast)
	}
	if p.re == nil {
		if p.literal == "" {
			return nil
		}
		var out [][2]int
		for off := 0; ; {
			i := strings.Index(s[off:], p.literal)
			if i < 0 {
				return out
			}
			out = append(out, [2]int{off + i, off + i + len(p.literal)})
			off += i + len(p.literal)
		}
	}
	runes := []rune(s)
	// byteAt[i] is the byte offset of rune i; a string with invalid UTF-8 maps each bad byte to
	// one U+FFFD rune, so count widths from the string itself.
	byteAt := make([]int, len(runes)+1)
	off := 0
	for i := range runes {
		byteAt[i] = off
		_, n := utf8.DecodeRuneInString(s[off:])
		off += n
	}
	byteAt[len(runes)] = off
	var out [][2]int
	m, err := p.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			out = append(out, [2]int{byteAt[m.Index], byteAt[m.Index+m.Length]})
		}
		m, err = p.re.FindNextMatch(m)
	}
	return out
}

// ---- pre-tokenizers ----

// piece is a part of the text on its way to the model. atOrigin: it starts at offset 0 of the
// input (Metaspace's prepend_scheme "first" needs it).
type piece struct {
	text     string
	atOrigin bool
}

type preTokenizer interface{ preTokenize(ps []piece) []piece }

type preTokenizerSequence []preTokenizer

func (seq preTokenizerSequence) preTokenize(ps []piece) []piece {
	for _, p := range seq {
		ps = p.preTokenize(ps)
	}
	return ps
}

type splitBehavior int

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

// splitByRanges cuts s at the given delimiter ranges (sorted, non-overlapping) with HF's
// SplitDelimiterBehavior semantics; invert swaps delimiters and the text between them.
func splitByRanges(p piece, ranges [][2]int, behavior splitBehavior, invert bool, out []piece) []piece {
	s := p.text
	type part struct {
		start, end int
		match      bool
	}
	parts := make([]part, 0, 2*len(ranges)+1)
	out = slices.Grow(out, 2*len(ranges)+1)
	last := 0
	for _, r := range ranges {
		if last < r[0] {
			parts = append(parts, part{last, r[0], invert})
		}
		parts = append(parts, part{r[0], r[1], !invert})
		last = r[1]
	}
	if last < len(s) {
		parts = append(parts, part{last, len(s), invert})
	}
	emit := func(start, end int) {
		if start < end {
			out = append(out, piece{text: s[start:end], atOrigin: p.atOrigin && start == 0})
		}
	}
	switch behavior {
	case splitRemoved:
		for _, pt := range parts {
			if !pt.match {
				emit(pt.start, pt.end)
			}
		}
	case splitIsolated:
		for _, pt := range parts {
			emit(pt.start, pt.end)
		}
	case splitMergedWithPrevious:
		start := 0
		for _, pt := range parts {
			if pt.match {
				emit(start, pt.end)
				start = pt.end
			}
		}
		emit(start, len(s))
	case splitMergedWithNext:
		start := 0
		for _, pt := range parts {
			if pt.match && pt.start > start {
				emit(start, pt.start)
				start = pt.start
			}
		}
		emit(start, len(s))
	case splitContiguous:
		start := 0
		for i, pt := range parts {
			if i > 0 && pt.match != parts[i-1].match {
				emit(start, pt.start)
				start = pt.start
			}
		}
		emit(start, len(s))
	}
	return out
}

type splitPreTokenizer struct {
	pattern  *pattern
	behavior splitBehavior
	invert   bool
}

// streamable reports whether matches can be consumed one by one (Tokenizer.encodeSegment).
func (sp *splitPreTokenizer) streamable() bool {
	return sp.behavior == splitIsolated && !sp.invert && sp.pattern.fast != nil
}

func (sp *splitPreTokenizer) preTokenize(ps []piece) []piece {
	out := make([]piece, 0, len(ps)*4)
	for _, p := range ps {
		out = splitByRanges(p, sp.pattern.findAll(p.text), sp.behavior, sp.invert, out)
	}
	return out
}

// runeClassPreTokenizer splits where a rune predicate holds (Digits, WhitespaceSplit, Punctuation).
type runeClassPreTokenizer struct {
	is       func(rune) bool
	behavior splitBehavior
	each     bool // every rune is its own delimiter (Digits individual_digits)
}

func (rc *runeClassPreTokenizer) preTokenize(ps []piece) []piece {
	out := make([]piece, 0, len(ps)*2)
	for _, p := range ps {
		var ranges [][2]int
		for i, r := range p.text {
			if !rc.is(r) {
				continue
			}
			end := i + utf8.RuneLen(r)
			if r == utf8.RuneError {
				end = i + 1
			}
			if !rc.each && len(ranges) > 0 && ranges[len(ranges)-1][1] == i {
				ranges[len(ranges)-1][1] = end
			} else {
				ranges = append(ranges, [2]int{i, end})
			}
		}
		out = splitByRanges(p, ranges, rc.behavior, false, out)
	}
	return out
}

// gpt2Pattern is the split ByteLevel applies when use_regex is true.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

type byteLevelPreTokenizer struct {
	addPrefixSpace bool
	split          *pattern // nil when use_regex is false
}

func (bl *byteLevelPreTokenizer) preTokenize(ps []piece) []piece {
	out := make([]piece, 0, len(ps))
	for _, p := range ps {
		if bl.addPrefixSpace && !strings.HasPrefix(p.text, " ") {
			p.text = " " + p.text
		}
		if bl.split != nil {
			out = splitByRanges(p, bl.split.findAll(p.text), splitIsolated, false, out)
		} else {
			out = append(out, p)
		}
	}
	for i := range out {
		out[i].text = byteLevelEncode(out[i].text)
	}
	return out
}

type metaspacePreTokenizer struct {
	replacement string
	prepend     string // "always", "first", "never"
	split       bool
}

func (ms *metaspacePreTokenizer) preTokenize(ps []piece) []piece {
	out := make([]piece, 0, len(ps)*4)
	for _, p := range ps {
		text := strings.ReplaceAll(p.text, " ", ms.replacement)
		if !strings.HasPrefix(text, ms.replacement) &&
			(ms.prepend == "always" || (ms.prepend == "first" && p.atOrigin)) {
			text = ms.replacement + text
		}
		np := piece{text: text, atOrigin: p.atOrigin}
		if !ms.split {
			out = append(out, np)
			continue
		}
		var ranges [][2]int
		for off := 0; ; {
			i := strings.Index(text[off:], ms.replacement)
			if i < 0 {
				break
			}
			ranges = append(ranges, [2]int{off + i, off + i + len(ms.replacement)})
			off += i + len(ms.replacement)
		}
		out = splitByRanges(np, ranges, splitMergedWithNext, false, out)
	}
	return out
}

// ---- byte-level alphabet (GPT-2 bytes_to_unicode) ----

var byteToRune, runeToByte = byteLevelTables()

// byteLevelUTF8 holds the UTF-8 encoding of byteToRune[b], so encoding is a copy per byte.
var byteLevelUTF8 = func() (t [256]string) {
	for b := range t {
		t[b] = string(byteToRune[b])
	}
	return t
}()

func byteLevelTables() ([256]rune, map[rune]byte) {
	var b2r [256]rune
	r2b := make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		printable := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		if printable {
			b2r[b] = rune(b)
		} else {
			b2r[b] = rune(256 + n)
			n++
		}
		r2b[b2r[b]] = byte(b)
	}
	return b2r, r2b
}

func byteLevelEncode(s string) string {
	buf := make([]byte, 0, len(s)+len(s)/2+2)
	for i := 0; i < len(s); i++ {
		buf = append(buf, byteLevelUTF8[s[i]]...)
	}
	return string(buf)
}
