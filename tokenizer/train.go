package tokenizer

// train.go: a byte-level BPE trainer for the project's own tiny base model (SPEC section 10).
// It is written here rather than taken from a library because no Go BPE trainer writes a
// Hugging Face tokenizer.json, and because training must pre-tokenize exactly as encoding
// will: the trainer parses the pre_tokenizer it writes with this package's own parser and
// counts the words that parser produces.

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DigitSplitPattern is the split regex of a tokenizer trained with TrainOptions.DigitsApart:
// Qwen2's, which makes every digit a token of its own.
const DigitSplitPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// DefaultChatTemplate is the chat template of the built-in tokenizer: BOS, then each user turn
// after <|user|> and each assistant turn after <|assistant|>, closed by EOS.
const DefaultChatTemplate = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"

// TrainOptions configures TrainBPE.
type TrainOptions struct {
	// VocabSize is the number of ids wanted: 256 bytes, the special tokens and the merges.
	VocabSize int
	// SpecialTokens get the ids right after the 256 bytes, in this order; they are never split
	// and never part of a merge.
	SpecialTokens []string
	// BOS and EOS name tokenizer_config.json's bos_token and eos_token (among SpecialTokens).
	// BOS is also prepended by the post-processor, as LLaMA-3's tokenizer does.
	BOS, EOS string
	// ModelMaxLength is tokenizer_config.json's model_max_length.
	ModelMaxLength int
	// ChatTemplate is tokenizer_config.json's chat_template ("" for none).
	ChatTemplate string
	// MinFrequency: a pair seen fewer times in the corpus is not merged, so a small corpus can
	// end with fewer than VocabSize ids.
	MinFrequency int
	// DigitsApart pre-tokenizes as Qwen2 (DigitSplitPattern, every digit its own token) instead
	// of GPT-2's ByteLevel regex (a number with its leading space is one word, which merges can
	// turn into whole-number tokens: shorter sequences, and number facts as token lookups).
	DigitsApart bool
}

// DefaultTrainOptions is the built-in tokenizer: 512 ids, the special tokens of
// testdata/tokenizers/bytes (same ids 256..259) and its chat template.
func DefaultTrainOptions() TrainOptions {
	return TrainOptions{
		VocabSize:      512,
		SpecialTokens:  []string{"<|endoftext|>", "<|bos|>", "<|user|>", "<|assistant|>"},
		BOS:            "<|bos|>",
		EOS:            "<|endoftext|>",
		ModelMaxLength: 4096,
		ChatTemplate:   DefaultChatTemplate,
		MinFrequency:   2,
	}
}

// TrainedBPE is a trained byte-level BPE vocabulary, ready to be written as HF files.
type TrainedBPE struct {
	// Merges in rank order, as byte-level token strings.
	Merges [][2]string
	opts   TrainOptions
}

// VocabSize is the number of ids of the trained tokenizer.
func (b *TrainedBPE) VocabSize() int { return 256 + len(b.opts.SpecialTokens) + len(b.Merges) }

// preTokenizer is the pre_tokenizer written into tokenizer.json: GPT-2's (ByteLevel with its
// regex, as testdata/tokenizers/bytes) or, with DigitsApart, Qwen2's (the digit-splitting regex,
// then the byte-level mapping without GPT-2's regex).
func (o TrainOptions) preTokenizer() map[string]any {
	if !o.DigitsApart {
		return map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
	}
	return map[string]any{
		"type": "Sequence",
		"pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]any{"Regex": DigitSplitPattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		},
	}
}

func (o TrainOptions) validate() error {
	seen := map[string]bool{}
	for i, s := range o.SpecialTokens {
		if s == "" || seen[s] {
			return fmt.Errorf("special token %d %q: empty or repeated", i, s)
		}
		seen[s] = true
	}
	switch {
	case o.VocabSize < 256+len(o.SpecialTokens):
		return fmt.Errorf("vocabulary size %d: want at least 256 bytes + %d special tokens", o.VocabSize, len(o.SpecialTokens))
	case o.BOS != "" && !seen[o.BOS]:
		return fmt.Errorf("bos token %q is not among the special tokens", o.BOS)
	case o.EOS != "" && !seen[o.EOS]:
		return fmt.Errorf("eos token %q is not among the special tokens", o.EOS)
	case o.ModelMaxLength < 0:
		return fmt.Errorf("model_max_length %d is negative", o.ModelMaxLength)
	case o.MinFrequency < 0:
		return fmt.Errorf("minimum pair frequency %d is negative", o.MinFrequency)
	}
	return nil
}

type symbolPair struct{ left, right int32 }

// trainWord is one distinct pre-tokenized word: its current symbols and how often it occurs.
type trainWord struct {
	symbols []int32
	count   int
}

// pairEntry is a candidate merge. The heap holds stale entries too; an entry is current when
// its count equals the pair's count now (every change of a count pushes a new entry).
type pairEntry struct {
	count int
	pair  symbolPair
}

type pairHeap []pairEntry

func (h pairHeap) Len() int { return len(h) }

// Less: the most frequent pair first; ties go to the pair of smaller ids (left, then right),
// as HF's BpeTrainer breaks them, so training is deterministic.
func (h pairHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.count != b.count {
		return a.count > b.count
	}
	if a.pair.left != b.pair.left {
		return a.pair.left < b.pair.left
	}
	return a.pair.right < b.pair.right
}
func (h pairHeap) Swap(i, j int)     { h[i], h[j] = h[j], h[i] }
func (h *pairHeap) Push(x any)       { *h = append(*h, x.(pairEntry)) }
func (h *pairHeap) Pop() any         { old := *h; e := old[len(old)-1]; *h = old[:len(old)-1]; return e }
func (h *pairHeap) push(e pairEntry) { heap.Push(h, e) }

// TrainBPE learns merges from texts until the vocabulary has opts.VocabSize ids or no pair is
// seen opts.MinFrequency times. Texts are pre-tokenized exactly as the written tokenizer.json
// will pre-tokenize them; special tokens inside a text separate words and are not learned.
func TrainBPE(ctx context.Context, texts []string, opts TrainOptions) (*TrainedBPE, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("tokenizer training: %w", err)
	}
	raw, err := json.Marshal(opts.preTokenizer())
	if err != nil {
		return nil, fmt.Errorf("tokenizer training: %w", err)
	}
	preTok, err := parsePreTokenizer(raw, "pre_tokenizer")
	if err != nil {
		return nil, fmt.Errorf("tokenizer training: %w", err)
	}
	counts := map[string]int{}
	for i, text := range texts {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		for _, seg := range splitOnSpecials(text, opts.SpecialTokens) {
			for _, p := range preTok.preTokenize([]piece{{text: seg, atOrigin: true}}) {
				counts[p.text]++
			}
		}
	}
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	slices.Sort(words)
	corpus := make([]trainWord, len(words))
	for i, w := range words {
		symbols := make([]int32, 0, len(w))
		for _, r := range w {
			b, ok := runeToByte[r]
			if !ok {
				return nil, fmt.Errorf("tokenizer training: pre-tokenized word %q is not byte-level", w)
			}
			symbols = append(symbols, int32(b))
		}
		corpus[i] = trainWord{symbols: symbols, count: counts[w]}
	}
	merges, err := learnMerges(ctx, corpus, opts.VocabSize-256-len(opts.SpecialTokens), max(opts.MinFrequency, 1))
	if err != nil {
		return nil, err
	}
	tokens := make([]string, 256, 256+len(merges))
	for b := range 256 {
		tokens[b] = byteLevelUTF8[b]
	}
	out := &TrainedBPE{opts: opts, Merges: make([][2]string, len(merges))}
	for i, m := range merges {
		out.Merges[i] = [2]string{tokens[m.left], tokens[m.right]}
		tokens = append(tokens, tokens[m.left]+tokens[m.right])
	}
	return out, nil
}

// learnMerges runs BPE on the words (symbols: byte values; a merge's symbol is 256 + its
// rank) and returns up to maxMerges merges. Pair counts are updated incrementally: a merge
// revisits only the words that hold its pair.
func learnMerges(ctx context.Context, corpus []trainWord, maxMerges, minFrequency int) ([]symbolPair, error) {
	pairCount := map[symbolPair]int{}
	pairWords := map[symbolPair][]int32{} // words that held the pair (may repeat or be stale)
	addPairs := func(w int32, sign int) []symbolPair {
		word := corpus[w]
		var touched []symbolPair
		for i := 0; i+1 < len(word.symbols); i++ {
			p := symbolPair{word.symbols[i], word.symbols[i+1]}
			pairCount[p] += sign * word.count
			touched = append(touched, p)
			if sign > 0 {
				if ws := pairWords[p]; len(ws) == 0 || ws[len(ws)-1] != w {
					pairWords[p] = append(ws, w)
				}
			}
		}
		return touched
	}
	for w := range corpus {
		addPairs(int32(w), 1)
	}
	h := make(pairHeap, 0, len(pairCount))
	for p, c := range pairCount {
		h = append(h, pairEntry{c, p})
	}
	heap.Init(&h)

	var merges []symbolPair
	for len(merges) < maxMerges && h.Len() > 0 {
		if len(merges)%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		top := heap.Pop(&h).(pairEntry)
		if pairCount[top.pair] != top.count {
			continue // stale
		}
		if top.count < minFrequency {
			break
		}
		merged := int32(256 + len(merges))
		merges = append(merges, top.pair)
		touched := map[symbolPair]bool{}
		for _, w := range pairWords[top.pair] {
			if !hasPair(corpus[w].symbols, top.pair) {
				continue
			}
			for _, p := range addPairs(w, -1) {
				touched[p] = true
			}
			corpus[w].symbols = applyMerge(corpus[w].symbols, top.pair, merged)
			for _, p := range addPairs(w, 1) {
				touched[p] = true
			}
		}
		delete(pairWords, top.pair)
		for p := range touched {
			if c := pairCount[p]; c > 0 {
				h.push(pairEntry{c, p})
			} else {
				delete(pairCount, p)
				delete(pairWords, p)
			}
		}
	}
	return merges, nil
}

func hasPair(symbols []int32, p symbolPair) bool {
	for i := 0; i+1 < len(symbols); i++ {
		if symbols[i] == p.left && symbols[i+1] == p.right {
			return true
		}
	}
	return false
}

// applyMerge replaces the non-overlapping occurrences of p, left to right, by merged.
func applyMerge(symbols []int32, p symbolPair, merged int32) []int32 {
	out := symbols[:0]
	for i := 0; i < len(symbols); i++ {
		if i+1 < len(symbols) && symbols[i] == p.left && symbols[i+1] == p.right {
			out = append(out, merged)
			i++
			continue
		}
		out = append(out, symbols[i])
	}
	return out
}

// splitOnSpecials cuts text at every occurrence of a special token, dropping the tokens.
func splitOnSpecials(text string, specials []string) []string {
	var out []string
	for text != "" {
		at, length := -1, 0
		for _, s := range specials {
			if i := strings.Index(text, s); i >= 0 && (at < 0 || i < at || i == at && len(s) > length) {
				at, length = i, len(s)
			}
		}
		if at < 0 {
			break
		}
		if at > 0 {
			out = append(out, text[:at])
		}
		text = text[at+length:]
	}
	if text != "" {
		out = append(out, text)
	}
	return out
}

// orderedVocab marshals token -> id in id order (an object; encoding/json would sort a map by
// key).
type orderedVocab []string

func (v orderedVocab) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for id, tok := range v {
		if id > 0 {
			buf.WriteByte(',')
		}
		key, err := json.Marshal(tok)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&buf, "%s:%d", key, id)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func (b *TrainedBPE) specialID(content string) int {
	return 256 + slices.Index(b.opts.SpecialTokens, content)
}

// TokenizerJSON is the tokenizer.json of the trained tokenizer, in the layout HF `tokenizers`
// writes: a byte-level BPE model with the merges as [left, right] pairs, the special tokens as
// added tokens, and a post-processor that prepends BOS.
func (b *TrainedBPE) TokenizerJSON() ([]byte, error) {
	vocab := make(orderedVocab, 0, b.VocabSize())
	for id := range 256 {
		vocab = append(vocab, byteLevelUTF8[id])
	}
	vocab = append(vocab, b.opts.SpecialTokens...)
	for _, m := range b.Merges {
		vocab = append(vocab, m[0]+m[1])
	}
	added := make([]map[string]any, 0, len(b.opts.SpecialTokens))
	for _, s := range b.opts.SpecialTokens {
		added = append(added, map[string]any{"id": b.specialID(s), "content": s, "single_word": false,
			"lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	var post any
	if b.opts.BOS != "" {
		bos := map[string]any{"SpecialToken": map[string]any{"id": b.opts.BOS, "type_id": 0}}
		seq := func(id string, typeID int) any {
			return map[string]any{"Sequence": map[string]any{"id": id, "type_id": typeID}}
		}
		post = map[string]any{"type": "Sequence", "processors": []any{
			map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
			map[string]any{
				"type":   "TemplateProcessing",
				"single": []any{bos, seq("A", 0)},
				"pair":   []any{bos, seq("A", 0), map[string]any{"SpecialToken": map[string]any{"id": b.opts.BOS, "type_id": 1}}, seq("B", 1)},
				"special_tokens": map[string]any{b.opts.BOS: map[string]any{
					"id": b.opts.BOS, "ids": []int{b.specialID(b.opts.BOS)}, "tokens": []string{b.opts.BOS}}},
			},
		}}
	} else {
		post = map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}
	}
	type modelJSONOut struct {
		Type                    string       `json:"type"`
		Dropout                 *float64     `json:"dropout"`
		UnkToken                *string      `json:"unk_token"`
		ContinuingSubwordPrefix *string      `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string      `json:"end_of_word_suffix"`
		FuseUnk                 bool         `json:"fuse_unk"`
		ByteFallback            bool         `json:"byte_fallback"`
		IgnoreMerges            bool         `json:"ignore_merges"`
		Vocab                   orderedVocab `json:"vocab"`
		Merges                  [][2]string  `json:"merges"`
	}
	doc := struct {
		Version       string           `json:"version"`
		Truncation    any              `json:"truncation"`
		Padding       any              `json:"padding"`
		AddedTokens   []map[string]any `json:"added_tokens"`
		Normalizer    any              `json:"normalizer"`
		PreTokenizer  any              `json:"pre_tokenizer"`
		PostProcessor any              `json:"post_processor"`
		Decoder       any              `json:"decoder"`
		Model         modelJSONOut     `json:"model"`
	}{
		Version:       "1.0",
		AddedTokens:   added,
		PreTokenizer:  b.opts.preTokenizer(),
		PostProcessor: post,
		Decoder:       map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		Model:         modelJSONOut{Type: "BPE", Vocab: vocab, Merges: b.Merges},
	}
	if doc.Model.Merges == nil {
		doc.Model.Merges = [][2]string{}
	}
	return marshalIndented(doc)
}

// TokenizerConfigJSON is the tokenizer_config.json: BOS/EOS, model_max_length, chat template.
func (b *TrainedBPE) TokenizerConfigJSON() ([]byte, error) {
	cfg := struct {
		BOS            *string `json:"bos_token"`
		EOS            *string `json:"eos_token"`
		ModelMaxLength int     `json:"model_max_length,omitempty"`
		CleanUp        bool    `json:"clean_up_tokenization_spaces"`
		Class          string  `json:"tokenizer_class"`
		ChatTemplate   string  `json:"chat_template,omitempty"`
	}{ModelMaxLength: b.opts.ModelMaxLength, Class: "PreTrainedTokenizerFast", ChatTemplate: b.opts.ChatTemplate}
	if b.opts.BOS != "" {
		cfg.BOS = &b.opts.BOS
	}
	if b.opts.EOS != "" {
		cfg.EOS = &b.opts.EOS
	}
	return marshalIndented(cfg)
}

func marshalIndented(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteDir writes dir/tokenizer.json and dir/tokenizer_config.json (creating dir), each
// through a temporary file renamed into place.
func (b *TrainedBPE) WriteDir(dir string) error {
	tok, err := b.TokenizerJSON()
	if err != nil {
		return fmt.Errorf("tokenizer.json: %w", err)
	}
	cfg, err := b.TokenizerConfigJSON()
	if err != nil {
		return fmt.Errorf("tokenizer_config.json: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, data := range map[string][]byte{"tokenizer.json": tok, "tokenizer_config.json": cfg} {
		path := filepath.Join(dir, name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}
