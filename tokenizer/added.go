package tokenizer

import (
	"sort"
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens.
type addedToken struct {
	id         int
	content    string
	special    bool
	lstrip     bool
	rstrip     bool
	normalized bool
	singleWord bool
}

// addedMatcher finds added tokens inside text, leftmost first and longest among those starting
// at the same place (the aho-corasick LeftmostLongest search HF uses).
type addedMatcher struct {
	tokens  map[string]*addedToken
	lengths [256][]int // first byte -> distinct token lengths, longest first
}

func newAddedMatcher(tokens []*addedToken) *addedMatcher {
	m := &addedMatcher{tokens: make(map[string]*addedToken, len(tokens))}
	seen := make(map[[2]int]bool)
	for _, tok := range tokens {
		if tok.content == "" {
			continue
		}
		m.tokens[tok.content] = tok
		key := [2]int{int(tok.content[0]), len(tok.content)}
		if !seen[key] {
			seen[key] = true
			m.lengths[key[0]] = append(m.lengths[key[0]], key[1])
		}
	}
	for i := range m.lengths {
		sort.Sort(sort.Reverse(sort.IntSlice(m.lengths[i])))
	}
	return m
}

// segment is a piece of text (id < 0) or an added token (id >= 0). start is its byte offset.
type segment struct {
	text  string
	id    int
	start int
}

// split cuts text at added tokens with HF's AddedVocabulary::find_matches semantics (single_word,
// lstrip, rstrip). Text pieces are returned with id -1; an empty text gives one empty piece.
func (m *addedMatcher) split(text string) []segment {
	if m == nil || len(m.tokens) == 0 || text == "" {
		return []segment{{text: text, id: noToken}}
	}
	var segs []segment
	consumed := 0 // end of the last emitted segment
	for pos := 0; pos < len(text); {
		tok := m.longestAt(text, pos)
		if tok == nil {
			pos++
			continue
		}
		start, stop := pos, pos+len(tok.content)
		pos = stop // HF's iterator resumes after the match, whatever the strip flags do
		if tok.singleWord {
			startOK := start == 0 || !endsWithWordChar(text[:start])
			stopOK := stop == len(text) || !startsWithWordChar(text[stop:])
			if !startOK || !stopOK {
				continue
			}
		}
		if tok.lstrip {
			start = max(trailingSpaceStart(text[:start]), consumed)
		}
		if tok.rstrip {
			stop += leadingSpaceLen(text[stop:])
		}
		if start < consumed { // the match overlaps spaces a previous rstrip already ate
			start = consumed
		}
		if consumed < start {
			segs = append(segs, segment{text: text[consumed:start], id: noToken, start: consumed})
		}
		segs = append(segs, segment{text: text[start:stop], id: tok.id, start: start})
		consumed = stop
		if pos < stop {
			pos = stop
		}
	}
	if consumed < len(text) {
		segs = append(segs, segment{text: text[consumed:], id: noToken, start: consumed})
	}
	return segs
}

func (m *addedMatcher) longestAt(text string, pos int) *addedToken {
	for _, n := range m.lengths[text[pos]] {
		if pos+n > len(text) {
			continue
		}
		if tok, ok := m.tokens[text[pos:pos+n]]; ok {
			return tok
		}
	}
	return nil
}

// isWordChar is Rust regex's \w, which HF's single_word check uses: Alphabetic, marks, decimal
// digits, connector punctuation and Join_Control.
func isWordChar(r rune) bool {
	return unicode.IsLetter(r) || unicode.In(r, unicode.M, unicode.Nd, unicode.Nl, unicode.Pc,
		unicode.Other_Alphabetic, unicode.Join_Control)
}

func endsWithWordChar(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordChar(r)
}

func startsWithWordChar(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordChar(r)
}

// trailingSpaceStart is the offset where s's trailing whitespace begins.
func trailingSpaceStart(s string) int {
	i := len(s)
	for i > 0 {
		r, n := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= n
	}
	return i
}

func leadingSpaceLen(s string) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += n
	}
	return i
}
