package llamacpp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/tokenizer"
)

// llama.cpp's token types (llama_token_type).
const (
	tokenNormal      int32 = 1
	tokenUnknown     int32 = 2
	tokenControl     int32 = 3
	tokenUserDefined int32 = 4
	tokenUnused      int32 = 5
	tokenByte        int32 = 6
)

// Pre-tokenizer split patterns of the byte-level BPE tokenizers llama.cpp
// names (tokenizer.ggml.pre), as their tokenizer.json files spell them.
var preTokenizerPatterns = map[string]string{
	"llama-bpe": `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
	"qwen2":     `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
}

// hfTokenizerJSON is the part of tokenizer.json the export reads.
type hfTokenizerJSON struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Model        struct {
		Type         string          `json:"type"`
		Vocab        map[string]int  `json:"vocab"`
		Merges       json.RawMessage `json:"merges"`
		ByteFallback bool            `json:"byte_fallback"`
		UnkToken     *string         `json:"unk_token"`
	} `json:"model"`
}

type component struct {
	Type           string            `json:"type"`
	Pretokenizers  []json.RawMessage `json:"pretokenizers"`
	Normalizers    []json.RawMessage `json:"normalizers"`
	Pattern        map[string]string `json:"pattern"`
	UseRegex       *bool             `json:"use_regex"`
	AddPrefixSpace bool              `json:"add_prefix_space"`
	Prepend        string            `json:"prepend"`
	PrependScheme  string            `json:"prepend_scheme"`
}

func parseComponent(raw json.RawMessage) (component, []component) {
	var c component
	if len(raw) == 0 || string(raw) == "null" || json.Unmarshal(raw, &c) != nil {
		return component{}, nil
	}
	subs := c.Pretokenizers
	if c.Type == "Sequence" && len(c.Normalizers) > 0 {
		subs = c.Normalizers
	}
	var out []component
	for _, s := range subs {
		var sc component
		if json.Unmarshal(s, &sc) == nil {
			out = append(out, sc)
		}
	}
	if c.Type != "Sequence" {
		out = []component{c}
	}
	return c, out
}

// bpePreName maps a byte-level BPE tokenizer's pre_tokenizer onto the name
// llama.cpp gives it.
func bpePreName(raw json.RawMessage, path string) (string, error) {
	_, steps := parseComponent(raw)
	if len(steps) == 1 && steps[0].Type == "ByteLevel" && (steps[0].UseRegex == nil || *steps[0].UseRegex) && !steps[0].AddPrefixSpace {
		return "gpt-2", nil
	}
	if len(steps) == 2 && steps[0].Type == "Split" && steps[1].Type == "ByteLevel" && steps[1].UseRegex != nil && !*steps[1].UseRegex {
		for name, pat := range preTokenizerPatterns {
			if steps[0].Pattern["Regex"] == pat {
				return name, nil
			}
		}
		return "", fmt.Errorf("llamacpp: %s: pre_tokenizer split pattern %q has no llama.cpp pre-tokenizer name (known: gpt-2, llama-bpe, qwen2)", path, steps[0].Pattern["Regex"])
	}
	return "", fmt.Errorf("llamacpp: %s: pre_tokenizer %s has no llama.cpp pre-tokenizer name (known: gpt-2, llama-bpe, qwen2)", path, raw)
}

// tokenizerMetadata is the tokenizer part of a model's GGUF metadata, read
// from the HF tokenizer files in dir: byte-level BPE as "gpt2" (tokens,
// merges, pre-tokenizer name), SentencePiece-style BPE with byte fallback as
// "llama" (tokens, scores), token types, special token ids, add_bos_token
// and the chat template. The vocabulary is padded to the model's vocab_size
// with "[PAD<id>]" tokens, as convert_hf_to_gguf.py pads it.
func tokenizerMetadata(dir string, cfg *model.Config) ([]gguf.KV, error) {
	path := filepath.Join(dir, "tokenizer.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("llamacpp: the GGUF needs the tokenizer: %w", err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, err
	}
	var tj hfTokenizerJSON
	if err := json.Unmarshal(raw, &tj); err != nil {
		return nil, fmt.Errorf("llamacpp: %s: %w", path, err)
	}
	n := cfg.VocabSize
	tokens := make([]string, n)
	types := make([]int32, n)
	set := func(id int, content string, typ int32) error {
		if id < 0 || id >= n {
			return fmt.Errorf("llamacpp: %s: token %q has id %d, beyond the model's vocab_size %d", path, content, id, n)
		}
		tokens[id], types[id] = content, typ
		return nil
	}
	for content, id := range tj.Model.Vocab {
		if err := set(id, content, tokenNormal); err != nil {
			return nil, err
		}
	}
	for _, a := range tj.AddedTokens {
		typ := tokenUserDefined
		if a.Special {
			typ = tokenControl
		}
		if err := set(a.ID, a.Content, typ); err != nil {
			return nil, err
		}
	}
	for id := range tokens {
		if tokens[id] == "" || tokens[id] == padToken(id) {
			tokens[id], types[id] = padToken(id), tokenUnused
		}
	}
	merges, err := readMerges(tj.Model.Merges, path)
	if err != nil {
		return nil, err
	}
	meta := []gguf.KV{}
	if tj.Model.ByteFallback {
		// SentencePiece converted to BPE (LLaMA 2, Mistral): llama.cpp's
		// "llama" tokenizer merges by score.
		addSpace := spacePrefix(tj.Normalizer, tj.PreTokenizer)
		if tj.Model.UnkToken != nil {
			if id, ok := tj.Model.Vocab[*tj.Model.UnkToken]; ok {
				types[id] = tokenUnknown
			}
		}
		for id, t := range tokens {
			if types[id] == tokenNormal && len(t) == 6 && strings.HasPrefix(t, "<0x") && strings.HasSuffix(t, ">") {
				types[id] = tokenByte
			}
		}
		meta = append(meta, gguf.KV{Key: "tokenizer.ggml.model", Value: "llama"},
			gguf.KV{Key: "tokenizer.ggml.tokens", Value: gguf.Array{Elem: gguf.TypeString, Values: tokens}},
			gguf.KV{Key: "tokenizer.ggml.scores", Value: gguf.Array{Elem: gguf.TypeFloat32, Values: mergeScores(tokens, types, merges)}},
			gguf.KV{Key: "tokenizer.ggml.token_type", Value: gguf.Array{Elem: gguf.TypeInt32, Values: types}},
			gguf.KV{Key: "tokenizer.ggml.add_space_prefix", Value: addSpace})
	} else {
		if tj.Model.Type != "BPE" && tj.Model.Type != "" {
			return nil, fmt.Errorf("llamacpp: %s: model.type %q: only BPE tokenizers are exported", path, tj.Model.Type)
		}
		pre, err := bpePreName(tj.PreTokenizer, path)
		if err != nil {
			return nil, err
		}
		ms := make([]string, len(merges))
		for i, m := range merges {
			ms[i] = m[0] + " " + m[1]
		}
		meta = append(meta, gguf.KV{Key: "tokenizer.ggml.model", Value: "gpt2"},
			gguf.KV{Key: "tokenizer.ggml.pre", Value: pre},
			gguf.KV{Key: "tokenizer.ggml.tokens", Value: gguf.Array{Elem: gguf.TypeString, Values: tokens}},
			gguf.KV{Key: "tokenizer.ggml.token_type", Value: gguf.Array{Elem: gguf.TypeInt32, Values: types}},
			gguf.KV{Key: "tokenizer.ggml.merges", Value: gguf.Array{Elem: gguf.TypeString, Values: ms}})
	}
	bos, hasBOS := tok.BOS()
	if !hasBOS && cfg.BOSTokenID != nil {
		bos, hasBOS = *cfg.BOSTokenID, true
	}
	eos, hasEOS := tok.EOS()
	if !hasEOS && len(cfg.EOSTokenIDs) > 0 {
		eos, hasEOS = cfg.EOSTokenIDs[0], true
	}
	if hasBOS {
		meta = append(meta, gguf.KV{Key: "tokenizer.ggml.bos_token_id", Value: uint32(bos)})
	}
	if hasEOS {
		meta = append(meta, gguf.KV{Key: "tokenizer.ggml.eos_token_id", Value: uint32(eos)})
	}
	cfgRaw, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("llamacpp: %w", err)
	}
	var tc struct {
		PadToken     json.RawMessage `json:"pad_token"`
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if cfgRaw != nil {
		if err := json.Unmarshal(cfgRaw, &tc); err != nil {
			return nil, fmt.Errorf("llamacpp: %s: %w", filepath.Join(dir, "tokenizer_config.json"), err)
		}
	}
	if pad := tokenContent(tc.PadToken); pad != "" {
		if id, ok := tok.TokenID(pad); ok {
			meta = append(meta, gguf.KV{Key: "tokenizer.ggml.padding_token_id", Value: uint32(id)})
		}
	} else if cfg.PadTokenID != nil {
		meta = append(meta, gguf.KV{Key: "tokenizer.ggml.padding_token_id", Value: uint32(*cfg.PadTokenID)})
	}
	ids := tok.Encode("a", true)
	addBOS := hasBOS && len(ids) > 0 && ids[0] == bos
	meta = append(meta, gguf.KV{Key: "tokenizer.ggml.add_bos_token", Value: addBOS})
	tmpl := chatTemplate(tc.ChatTemplate)
	if b, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		tmpl = string(b)
	}
	if tmpl != "" {
		meta = append(meta, gguf.KV{Key: "tokenizer.chat_template", Value: tmpl})
	}
	return meta, nil
}

func padToken(id int) string { return fmt.Sprintf("[PAD%d]", id) }

func tokenContent(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Content string `json:"content"`
	}
	json.Unmarshal(raw, &obj)
	return obj.Content
}

func chatTemplate(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	json.Unmarshal(raw, &named)
	for _, n := range named {
		if n.Name == "default" {
			return n.Template
		}
	}
	return ""
}

func readMerges(raw json.RawMessage, path string) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err == nil {
		out := make([][2]string, len(asStrings))
		for i, s := range asStrings {
			a, b, ok := strings.Cut(s, " ")
			if !ok {
				return nil, fmt.Errorf("llamacpp: %s: model.merges[%d] %q: want two tokens", path, i, s)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][2]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("llamacpp: %s: model.merges: %w", path, err)
	}
	return pairs, nil
}

// noMergeScore marks a SentencePiece token no merge produces.
const noMergeScore = -1e9

// mergeScores gives each normal token of a SentencePiece-style BPE the
// score llama.cpp's "llama" tokenizer merges by: minus the rank of the
// first merge producing it (counting distinct tokens), so higher scores
// merge first as lower ranks do. Tokens no merge produces score 0 when they
// are single characters or not normal, else noMergeScore.
func mergeScores(tokens []string, types []int32, merges [][2]string) []float32 {
	rank := map[string]int{}
	for _, m := range merges {
		t := m[0] + m[1]
		if _, seen := rank[t]; !seen {
			rank[t] = len(rank) + 1
		}
	}
	scores := make([]float32, len(tokens))
	for id, t := range tokens {
		switch r, ok := rank[t]; {
		case types[id] != tokenNormal:
		case ok:
			scores[id] = -float32(r)
		case utf8.RuneCountInString(t) > 1:
			scores[id] = noMergeScore
		}
	}
	return scores
}

// spacePrefix says whether a SentencePiece-style tokenizer prepends
// "▁" (a Prepend normalizer or a Metaspace pre-tokenizer that prepends).
func spacePrefix(normalizer, pre json.RawMessage) bool {
	_, steps := parseComponent(normalizer)
	for _, s := range steps {
		if s.Type == "Prepend" && s.Prepend == "▁" {
			return true
		}
	}
	_, psteps := parseComponent(pre)
	for _, s := range psteps {
		if s.Type == "Metaspace" {
			return s.PrependScheme != "never"
		}
	}
	return false
}

// hfTokenizerFiles rebuilds tokenizer.json and tokenizer_config.json from a
// GGUF model's tokenizer metadata.
func hfTokenizerFiles(g *gguf.File) (tokJSON, cfgJSON []byte, err error) {
	kind, err := g.String("tokenizer.ggml.model")
	if err != nil {
		return nil, nil, err
	}
	tokens, err := g.Strings("tokenizer.ggml.tokens")
	if err != nil {
		return nil, nil, err
	}
	types := make([]int32, len(tokens))
	for i := range types {
		types[i] = tokenNormal
	}
	if g.Has("tokenizer.ggml.token_type") {
		if types, err = g.Int32s("tokenizer.ggml.token_type"); err != nil {
			return nil, nil, err
		}
		if len(types) != len(tokens) {
			return nil, nil, fmt.Errorf("gguf: %s: metadata key \"tokenizer.ggml.token_type\" has %d entries for %d tokens", g.Path(), len(types), len(tokens))
		}
	}
	vocab := map[string]int{}
	type added struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		Lstrip     bool   `json:"lstrip"`
		Rstrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	var addedTokens []added
	unk := ""
	for id, t := range tokens {
		if _, dup := vocab[t]; dup {
			return nil, nil, fmt.Errorf("gguf: %s: metadata key \"tokenizer.ggml.tokens\": token %q appears twice (ids %d and %d)", g.Path(), t, vocab[t], id)
		}
		vocab[t] = id
		switch types[id] {
		case tokenControl:
			addedTokens = append(addedTokens, added{ID: id, Content: t, Special: true})
		case tokenUserDefined:
			addedTokens = append(addedTokens, added{ID: id, Content: t})
		case tokenUnknown:
			unk = t
			addedTokens = append(addedTokens, added{ID: id, Content: t, Special: true})
		}
	}
	tj := map[string]any{"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": addedTokens, "post_processor": nil}
	bpe := map[string]any{"type": "BPE", "dropout": nil, "continuing_subword_prefix": nil, "end_of_word_suffix": nil,
		"fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "unk_token": nil, "vocab": vocab}
	switch kind {
	case "gpt2":
		merges, err := g.Strings("tokenizer.ggml.merges")
		if err != nil {
			return nil, nil, err
		}
		bpe["merges"] = merges
		pre := "gpt-2"
		if g.Has("tokenizer.ggml.pre") {
			if pre, err = g.String("tokenizer.ggml.pre"); err != nil {
				return nil, nil, err
			}
		}
		byteLevel := map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
		tj["normalizer"] = nil
		switch pre {
		case "gpt-2", "default":
			tj["pre_tokenizer"] = byteLevel
		case "llama-bpe", "llama3", "qwen2":
			pat := preTokenizerPatterns[pre]
			if pre == "llama3" {
				pat = preTokenizerPatterns["llama-bpe"]
			}
			if pre == "qwen2" {
				tj["normalizer"] = map[string]any{"type": "NFC"}
			}
			tj["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]string{"Regex": pat}, "behavior": "Isolated", "invert": false},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
			}}
		default:
			return nil, nil, fmt.Errorf("gguf: %s: metadata key \"tokenizer.ggml.pre\" is %q; sparselora reads gpt-2, llama-bpe, qwen2", g.Path(), pre)
		}
		tj["decoder"] = byteLevel
	case "llama":
		scores, err := g.Float32s("tokenizer.ggml.scores")
		if err != nil {
			return nil, nil, err
		}
		if len(scores) != len(tokens) {
			return nil, nil, fmt.Errorf("gguf: %s: metadata key \"tokenizer.ggml.scores\" has %d entries for %d tokens", g.Path(), len(scores), len(tokens))
		}
		addSpace := true
		if g.Has("tokenizer.ggml.add_space_prefix") {
			if addSpace, err = g.Bool("tokenizer.ggml.add_space_prefix"); err != nil {
				return nil, nil, err
			}
		}
		bpe["merges"] = scoreMerges(tokens, types, scores, vocab)
		bpe["byte_fallback"], bpe["fuse_unk"] = true, true
		if unk != "" {
			bpe["unk_token"] = unk
		}
		replace := map[string]any{"type": "Replace", "pattern": map[string]string{"String": " "}, "content": "▁"}
		decoders := []any{map[string]any{"type": "Replace", "pattern": map[string]string{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"}}
		if addSpace {
			tj["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "Prepend", "prepend": "▁"}, replace}}
			decoders = append(decoders, map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0})
		} else {
			tj["normalizer"] = replace
		}
		tj["pre_tokenizer"] = nil
		tj["decoder"] = map[string]any{"type": "Sequence", "decoders": decoders}
	default:
		return nil, nil, fmt.Errorf("gguf: %s: metadata key \"tokenizer.ggml.model\" is %q; sparselora reads gpt2 (byte-level BPE) and llama (SentencePiece)", g.Path(), kind)
	}
	tj["model"] = bpe
	tc := map[string]any{"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false}
	for _, s := range []struct{ key, field string }{{"bos", "bos_token"}, {"eos", "eos_token"}, {"padding", "pad_token"}} {
		k := "tokenizer.ggml." + s.key + "_token_id"
		if !g.Has(k) {
			continue
		}
		id, err := g.Uint32(k)
		if err != nil {
			return nil, nil, err
		}
		if int(id) >= len(tokens) {
			return nil, nil, fmt.Errorf("gguf: %s: metadata key %q is %d, beyond the %d tokens", g.Path(), k, id, len(tokens))
		}
		tc[s.field] = tokens[id]
	}
	addBOS := false
	if g.Has("tokenizer.ggml.add_bos_token") {
		if addBOS, err = g.Bool("tokenizer.ggml.add_bos_token"); err != nil {
			return nil, nil, err
		}
	}
	tc["add_bos_token"] = addBOS
	tc["add_eos_token"] = false
	if g.Has("tokenizer.chat_template") {
		if tc["chat_template"], err = g.String("tokenizer.chat_template"); err != nil {
			return nil, nil, err
		}
	}
	if tokJSON, err = marshal(tj); err != nil {
		return nil, nil, err
	}
	cfgJSON, err = marshal(tc)
	return tokJSON, cfgJSON, err
}

// marshal writes JSON without HTML escaping (tokens hold < and >).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	err := enc.Encode(v)
	return buf.Bytes(), err
}

// scoreMerges rebuilds BPE merges from SentencePiece scores, as HF's
// SentencePieceExtractor does: every split of a normal token into two
// vocabulary pieces, tokens by descending score (ties by id).
func scoreMerges(tokens []string, types []int32, scores []float32, vocab map[string]int) []string {
	order := make([]int, 0, len(tokens))
	for id, t := range tokens {
		if types[id] == tokenNormal && utf8.RuneCountInString(t) > 1 && scores[id] > noMergeScore {
			order = append(order, id)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case scores[a] > scores[b]:
			return -1
		case scores[a] < scores[b]:
			return 1
		}
		return 0
	})
	var merges []string
	for _, id := range order {
		t := tokens[id]
		for i := range t {
			if i == 0 {
				continue
			}
			a, b := t[:i], t[i:]
			ia, okA := vocab[a]
			ib, okB := vocab[b]
			if okA && okB && types[ia] == tokenNormal && types[ib] == tokenNormal {
				merges = append(merges, a+" "+b)
			}
		}
	}
	return merges
}
