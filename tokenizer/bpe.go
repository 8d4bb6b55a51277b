package tokenizer

import (
	"fmt"
	"unicode/utf8"
)

// bpeModel is tokenizer.json's model of type BPE.
type bpeModel struct {
	vocab        map[string]int
	idTokens     map[int]string
	merges       map[uint64]mergeResult // left id << 32 | right id
	unk          int                    // -1: no unk_token
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix
	byteTokens   [256]int
	// boundary is "▁" (SentencePiece's space) when no vocabulary token contains it after
	// another character, so no merge can cross the place before it: a long word (LLaMA-2 has
	// no pre-tokenizer, a whole text is one word) is then cut there before BPE.
	boundary string
}

const sentencePieceSpace = "\u2581"

// uncrossedBoundary reports whether no token has marker after a different character.
func uncrossedBoundary(vocab map[string]int, marker string) bool {
	if _, ok := vocab[marker]; !ok {
		return false
	}
	for tok := range vocab {
		if nextBoundary(tok, marker) >= 0 {
			return false
		}
	}
	return true
}

type mergeResult struct {
	rank  int32
	newID int32
}

func mergeKey(a, b int) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// newBPEModel builds the merge table; merges are "a b" strings or [a, b] pairs.
func newBPEModel(vocab map[string]int, merges [][2]string, unkToken string, hasUnk bool,
	prefix, suffix string, fuseUnk, byteFallback, ignoreMerges bool) (*bpeModel, error) {
	m := &bpeModel{
		vocab:        vocab,
		idTokens:     make(map[int]string, len(vocab)),
		merges:       make(map[uint64]mergeResult, len(merges)),
		unk:          noToken,
		fuseUnk:      fuseUnk,
		byteFallback: byteFallback,
		ignoreMerges: ignoreMerges,
		prefix:       prefix,
		suffix:       suffix,
	}
	for tok, id := range vocab {
		if id < 0 || id >= 1<<31 {
			return nil, fmt.Errorf("model.vocab[%q]: id %d out of range", tok, id)
		}
		m.idTokens[id] = tok
	}
	if hasUnk {
		id, ok := vocab[unkToken]
		if !ok {
			return nil, fmt.Errorf("model.unk_token %q is not in model.vocab", unkToken)
		}
		m.unk = id
	}
	if uncrossedBoundary(vocab, sentencePieceSpace) {
		m.boundary = sentencePieceSpace
	}
	for b := range m.byteTokens {
		m.byteTokens[b] = noToken
		if id, ok := vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteTokens[b] = id
		}
	}
	for rank, pair := range merges {
		a, okA := vocab[pair[0]]
		b, okB := vocab[pair[1]]
		if !okA || !okB {
			return nil, fmt.Errorf("model.merges[%d] %q: token not in model.vocab", rank, pair[0]+" "+pair[1])
		}
		right := pair[1]
		if len(prefix) > 0 && len(right) >= len(prefix) && right[:len(prefix)] == prefix {
			right = right[len(prefix):]
		}
		newID, ok := vocab[pair[0]+right]
		if !ok {
			return nil, fmt.Errorf("model.merges[%d] %q: merged token %q not in model.vocab", rank, pair[0]+" "+pair[1], pair[0]+right)
		}
		key := mergeKey(a, b)
		if _, dup := m.merges[key]; dup {
			continue // HF keeps the first (lowest) rank of a repeated merge
		}
		m.merges[key] = mergeResult{rank: int32(rank), newID: int32(newID)}
	}
	return m, nil
}

func (m *bpeModel) idToToken(id int) (string, bool) {
	tok, ok := m.idTokens[id]
	return tok, ok
}

type bpeSymbol struct {
	id         int
	prev, next int // indices into the symbol slice, -1 at the ends
	removed    bool
}

type bpeMerge struct {
	pos   int
	rank  int32
	newID int32
}

// mergeHeap is a binary min-heap ordered by (rank, pos), as HF's BinaryHeap of Merge.
type mergeHeap []bpeMerge

func (h mergeHeap) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

func (h *mergeHeap) push(x bpeMerge) {
	*h = append(*h, x)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s.less(i, p) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *mergeHeap) pop() bpeMerge {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && s.less(r, l) {
			c = r
		}
		if !s.less(c, i) {
			break
		}
		s[i], s[c] = s[c], s[i]
		i = c
	}
	*h = s
	return top
}

// tokenize appends the ids of one pre-tokenized word (HF BPE::tokenize_with_cache without the
// cache, which the Tokenizer keeps).
func (m *bpeModel) tokenize(word string, ids []int) []int {
	if m.ignoreMerges {
		if id, ok := m.vocab[word]; ok {
			return append(ids, id)
		}
	}
	syms := make([]bpeSymbol, 0, len(word))
	lastUnk := false
	for i := 0; i < len(word); {
		_, size := utf8.DecodeRuneInString(word[i:])
		ch := word[i : i+size]
		first, last := i == 0, i+size == len(word)
		i += size
		key := ch
		if (!first && m.prefix != "") || (last && m.suffix != "") {
			if !first {
				key = m.prefix + key
			}
			if last {
				key += m.suffix
			}
		}
		if id, ok := m.vocab[key]; ok {
			syms = append(syms, bpeSymbol{id: id})
			lastUnk = false
			continue
		}
		if m.byteFallback {
			all := true
			for j := 0; j < len(ch); j++ {
				if m.byteTokens[ch[j]] < 0 {
					all = false
					break
				}
			}
			if all {
				for j := 0; j < len(ch); j++ {
					syms = append(syms, bpeSymbol{id: m.byteTokens[ch[j]]})
				}
				lastUnk = false
				continue
			}
		}
		if m.unk >= 0 {
			if !(m.fuseUnk && lastUnk) {
				syms = append(syms, bpeSymbol{id: m.unk})
			}
			lastUnk = true
		}
	}
	for i := range syms {
		syms[i].prev = i - 1
		syms[i].next = i + 1
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	heap := make(mergeHeap, 0, len(syms))
	for i := 0; i+1 < len(syms); i++ {
		if r, ok := m.merges[mergeKey(syms[i].id, syms[i+1].id)]; ok {
			heap.push(bpeMerge{pos: i, rank: r.rank, newID: r.newID})
		}
	}
	for len(heap) > 0 {
		top := heap.pop()
		cur := &syms[top.pos]
		if cur.removed || cur.next < 0 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		r, ok := m.merges[mergeKey(cur.id, right.id)]
		if !ok || r.newID != top.newID {
			continue // stale entry: one side was merged since it was queued
		}
		cur.id = int(top.newID)
		cur.next = right.next
		syms[nextPos].removed = true
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if r, ok := m.merges[mergeKey(syms[cur.prev].id, cur.id)]; ok {
				heap.push(bpeMerge{pos: cur.prev, rank: r.rank, newID: r.newID})
			}
		}
		if cur.next >= 0 {
			if r, ok := m.merges[mergeKey(cur.id, syms[cur.next].id)]; ok {
				heap.push(bpeMerge{pos: top.pos, rank: r.rank, newID: r.newID})
			}
		}
	}
	for _, s := range syms {
		if !s.removed {
			ids = append(ids, s.id)
		}
	}
	return ids
}
