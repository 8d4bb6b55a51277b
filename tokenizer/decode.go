package tokenizer

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// decoder is HF's Decoder::decode_chain: tokens in, tokens out; Decode joins the result.
type decoder interface {
	decode(tokens []string) []string
}

type decoderSequence []decoder

func (seq decoderSequence) decode(tokens []string) []string {
	for _, d := range seq {
		tokens = d.decode(tokens)
	}
	return tokens
}

// byteLevelDecoder maps byte-level characters back to bytes; a token with a character outside
// the byte alphabet (e.g. an added token) contributes its UTF-8 bytes as they are.
type byteLevelDecoder struct{}

func (byteLevelDecoder) decode(tokens []string) []string {
	var buf []byte
	for _, tok := range tokens {
		mark := len(buf)
		ok := true
		for _, r := range tok {
			b, found := runeToByte[r]
			if !found {
				ok = false
				break
			}
			buf = append(buf, b)
		}
		if !ok {
			buf = append(buf[:mark], tok...)
		}
	}
	return []string{lossyUTF8(buf)}
}

type replaceDecoder struct {
	pattern *pattern
	content string
}

func (r replaceDecoder) decode(tokens []string) []string {
	out := make([]string, len(tokens))
	n := replaceNormalizer(r)
	for i, tok := range tokens {
		out[i] = n.normalize(tok)
	}
	return out
}

// byteFallbackDecoder turns runs of <0xXX> tokens into text; invalid UTF-8 becomes one U+FFFD
// per byte, as HF does.
type byteFallbackDecoder struct{}

func (byteFallbackDecoder) decode(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, tok := range tokens {
		if len(tok) == 6 && strings.HasPrefix(tok, "<0x") && tok[5] == '>' {
			if b, err := strconv.ParseUint(tok[3:5], 16, 8); err == nil {
				pending = append(pending, byte(b))
				continue
			}
		}
		flush()
		out = append(out, tok)
	}
	flush()
	return out
}

type fuseDecoder struct{}

func (fuseDecoder) decode(tokens []string) []string { return []string{strings.Join(tokens, "")} }

// stripDecoder removes up to start leading and stop trailing content characters of each token.
type stripDecoder struct {
	content     rune
	start, stop int
}

func (st stripDecoder) decode(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, tok := range tokens {
		runes := []rune(tok)
		lo := 0
		for lo < st.start && lo < len(runes) && runes[lo] == st.content {
			lo++
		}
		hi := len(runes)
		for n := 0; n < st.stop && hi > lo && runes[hi-1] == st.content; n++ {
			hi--
		}
		out[i] = string(runes[lo:hi])
	}
	return out
}

type metaspaceDecoder struct {
	replacement rune
	prepend     bool // prepend_scheme != "never": the first token drops its replacement chars
}

func (ms metaspaceDecoder) decode(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, tok := range tokens {
		var b strings.Builder
		for _, r := range tok {
			if r == ms.replacement {
				if i == 0 && ms.prepend {
					continue
				}
				r = ' '
			}
			b.WriteRune(r)
		}
		out[i] = b.String()
	}
	return out
}

// lossyUTF8 is Rust's String::from_utf8_lossy (and Python's errors="replace"): each maximal
// invalid subpart becomes one U+FFFD.
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || n > 1 {
			sb.Write(b[i : i+n])
			i += n
			continue
		}
		sb.WriteRune(utf8.RuneError)
		i += invalidPrefixLen(b[i:])
	}
	return sb.String()
}

// invalidPrefixLen is the length of the maximal prefix of a well-formed sequence at b[0]
// (at least 1), per Unicode Table 3-7.
func invalidPrefixLen(b []byte) int {
	lead := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case lead >= 0xC2 && lead <= 0xDF:
		need = 1
	case lead == 0xE0:
		need, lo = 2, 0xA0
	case lead == 0xED:
		need, hi = 2, 0x9F
	case lead >= 0xE1 && lead <= 0xEF:
		need = 2
	case lead == 0xF0:
		need, lo = 3, 0x90
	case lead == 0xF4:
		need, hi = 3, 0x8F
	case lead >= 0xF1 && lead <= 0xF3:
		need = 3
	default:
		return 1
	}
	n := 1
	for k := 0; k < need && n < len(b); k++ {
		c := b[n]
		if k == 0 && (c < lo || c > hi) || k > 0 && (c < 0x80 || c > 0xBF) {
			break
		}
		n++
	}
	return n
}

// ---- post-processors (add_special_tokens) ----

type postProcessor interface{ process(ids []int) []int }

// templateProcessor is TemplateProcessing's "single" template; Roberta/Bert processing map to it.
type templateProcessor struct {
	items []templateItem
}

type templateItem struct {
	special  []int
	sequence bool // $A
}

func (tp *templateProcessor) process(ids []int) []int {
	out := make([]int, 0, len(ids)+4)
	for _, it := range tp.items {
		if it.sequence {
			out = append(out, ids...)
		} else {
			out = append(out, it.special...)
		}
	}
	return out
}

type postProcessorSequence []postProcessor

func (seq postProcessorSequence) process(ids []int) []int {
	for _, p := range seq {
		ids = p.process(ids)
	}
	return ids
}

type identityProcessor struct{}

func (identityProcessor) process(ids []int) []int { return ids }
