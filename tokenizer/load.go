package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
	"golang.org/x/text/unicode/norm"
)

// Load reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (and
// dir/chat_template.jinja, which transformers 5 writes instead of a config field). dir may be a
// model directory or a tokenizer-only directory.
func Load(dir string) (*Tokenizer, error) {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		// A path to a file where a directory belongs: say so, rather than
		// "open DIR/tokenizer.json/tokenizer.json: not a directory".
		return nil, fmt.Errorf("tokenizer: %s is a file; want the directory that holds tokenizer.json (here %s)", dir, filepath.Dir(dir))
	}
	path := filepath.Join(dir, "tokenizer.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := parseTokenizerJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	cfgData, err := os.ReadFile(cfgPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		cfgData = nil
	case err != nil:
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if err := t.applyConfig(cfgData); err != nil {
		return nil, fmt.Errorf("%s: %w", cfgPath, err)
	}
	if tmpl, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		t.setChatTemplate(string(tmpl), "chat_template.jinja")
	}
	return t, nil
}

type tokenizerJSON struct {
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Decoder       json.RawMessage  `json:"decoder"`
	Model         *modelJSON       `json:"model"`
}

type addedTokenJSON struct {
	ID         *int   `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	Lstrip     bool   `json:"lstrip"`
	Rstrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type modelJSON struct {
	Type                    string          `json:"type"`
	Dropout                 *float64        `json:"dropout"`
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   json.RawMessage `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
}

// componentJSON holds the fields of any normalizer, pre-tokenizer, post-processor or decoder.
type componentJSON struct {
	Type             string            `json:"type"`
	Normalizers      []json.RawMessage `json:"normalizers"`
	PreTokenizers    []json.RawMessage `json:"pretokenizers"`
	Decoders         []json.RawMessage `json:"decoders"`
	Processors       []json.RawMessage `json:"processors"`
	Prepend          *string           `json:"prepend"`
	Append           *string           `json:"append"`
	Pattern          *patternJSON      `json:"pattern"`
	Content          *string           `json:"content"`
	Behavior         string            `json:"behavior"`
	Invert           bool              `json:"invert"`
	AddPrefixSpace   *bool             `json:"add_prefix_space"`
	UseRegex         *bool             `json:"use_regex"`
	Replacement      *string           `json:"replacement"`
	PrependScheme    string            `json:"prepend_scheme"`
	Split            *bool             `json:"split"`
	IndividualDigits bool              `json:"individual_digits"`
	Start            int               `json:"start"`
	Stop             int               `json:"stop"`
	StripLeft        bool              `json:"strip_left"`
	StripRight       bool              `json:"strip_right"`
	Single           []json.RawMessage `json:"single"`
	SpecialTokens    map[string]struct {
		IDs []int `json:"ids"`
	} `json:"special_tokens"`
	Sep []json.RawMessage `json:"sep"`
	Cls []json.RawMessage `json:"cls"`
}

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

func parseTokenizerJSON(data []byte) (*Tokenizer, error) {
	var tj tokenizerJSON
	if err := json.Unmarshal(data, &tj); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if tj.Model == nil {
		return nil, errors.New("model: missing")
	}
	model, err := parseModel(tj.Model)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{
		model:          model,
		added:          make(map[int]*addedToken),
		addedByContent: make(map[string]int),
		bos:            noToken,
		eos:            noToken,
		cache:          make(map[string][]int),
	}
	var raw, normalized []*addedToken
	for i, a := range tj.AddedTokens {
		if a.ID == nil || *a.ID < 0 || *a.ID >= 1<<31 {
			return nil, fmt.Errorf("added_tokens[%d].id: missing or out of range", i)
		}
		if a.Content == "" {
			return nil, fmt.Errorf("added_tokens[%d].content: empty", i)
		}
		tok := &addedToken{id: *a.ID, content: a.Content, special: a.Special, lstrip: a.Lstrip,
			rstrip: a.Rstrip, normalized: a.Normalized, singleWord: a.SingleWord}
		t.added[tok.id] = tok
		t.addedByContent[tok.content] = tok.id
		if tok.normalized {
			normalized = append(normalized, tok)
		} else {
			raw = append(raw, tok)
		}
	}
	t.rawMatcher = newAddedMatcher(raw)
	t.normMatcher = newAddedMatcher(normalized)
	for id := range model.idTokens {
		t.vocabSize = max(t.vocabSize, id+1)
	}
	for id := range t.added {
		t.vocabSize = max(t.vocabSize, id+1)
	}
	if t.normalizer, err = parseNormalizer(tj.Normalizer, "normalizer"); err != nil {
		return nil, err
	}
	if t.preTok, err = parsePreTokenizer(tj.PreTokenizer, "pre_tokenizer"); err != nil {
		return nil, err
	}
	t.preTok, t.byteLevelWords = splitOffByteLevel(t.preTok)
	if t.post, err = t.parsePostProcessor(tj.PostProcessor, "post_processor"); err != nil {
		return nil, err
	}
	if t.decoder, err = parseDecoder(tj.Decoder, "decoder"); err != nil {
		return nil, err
	}
	return t, nil
}

// parseModel decodes the vocabulary and merges. tokenizer.json files are large (10 MB), so each
// part is decoded once, into its final type.
// splitOffByteLevel removes a final plain ByteLevel step (see Tokenizer.byteLevelWords).
func splitOffByteLevel(p preTokenizer) (preTokenizer, bool) {
	plain := func(p preTokenizer) bool {
		bl, ok := p.(*byteLevelPreTokenizer)
		return ok && bl.split == nil && !bl.addPrefixSpace
	}
	if plain(p) {
		return nil, true
	}
	if seq, ok := p.(preTokenizerSequence); ok && len(seq) > 0 && plain(seq[len(seq)-1]) {
		switch len(seq) {
		case 1:
			return nil, true
		case 2:
			return seq[0], true
		}
		return seq[:len(seq)-1], true
	}
	return p, false
}

func parseModel(mj *modelJSON) (*bpeModel, error) {
	if mj.Type == "" && len(mj.Merges) > 0 {
		mj.Type = "BPE" // old files omit the type
	}
	if mj.Type != "BPE" {
		return nil, fmt.Errorf("model.type %q not supported (only BPE)", mj.Type)
	}
	if mj.Dropout != nil && *mj.Dropout > 0 {
		return nil, fmt.Errorf("model.dropout %g not supported (BPE dropout is for training only)", *mj.Dropout)
	}
	var vocab map[string]int
	if err := json.Unmarshal(mj.Vocab, &vocab); err != nil || len(vocab) == 0 {
		return nil, errors.New("model.vocab: want a non-empty object of token: id")
	}
	var merges [][2]string
	if rest := bytes.TrimLeft(bytes.TrimPrefix(bytes.TrimSpace(mj.Merges), []byte("[")), " \t\r\n"); len(rest) > 0 && rest[0] == '"' {
		var asStrings []string
		if err := json.Unmarshal(mj.Merges, &asStrings); err != nil {
			return nil, errors.New("model.merges: want a list of \"a b\" strings or [a, b] pairs")
		}
		merges = make([][2]string, len(asStrings))
		for i, s := range asStrings {
			a, b, ok := strings.Cut(s, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, fmt.Errorf("model.merges[%d] %q: want two tokens separated by one space", i, s)
			}
			merges[i] = [2]string{a, b}
		}
	} else if !isNull(mj.Merges) {
		var asPairs [][]string
		if err := json.Unmarshal(mj.Merges, &asPairs); err != nil {
			return nil, errors.New("model.merges: want a list of \"a b\" strings or [a, b] pairs")
		}
		merges = make([][2]string, len(asPairs))
		for i, p := range asPairs {
			if len(p) != 2 {
				return nil, fmt.Errorf("model.merges[%d]: want 2 tokens, got %d", i, len(p))
			}
			merges[i] = [2]string{p[0], p[1]}
		}
	}
	unk, hasUnk := "", mj.UnkToken != nil
	if hasUnk {
		unk = *mj.UnkToken
	}
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	m, err := newBPEModel(vocab, merges, unk, hasUnk, deref(mj.ContinuingSubwordPrefix),
		deref(mj.EndOfWordSuffix), mj.FuseUnk, mj.ByteFallback, mj.IgnoreMerges)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func parseComponent(raw json.RawMessage, field string) (*componentJSON, error) {
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return &c, nil
}

func unsupported(field, typ string) error {
	return fmt.Errorf("%s.type %q not supported", field, typ)
}

func compilePattern(p *patternJSON, field string) (*pattern, error) {
	switch {
	case p == nil:
		return nil, fmt.Errorf("%s.pattern: missing", field)
	case p.String != nil:
		return &pattern{literal: *p.String}, nil
	case p.Regex != nil:
		if fast := fastMatcher(*p.Regex); fast != nil {
			return &pattern{fast: fast}, nil
		}
		re, err := regexp2.Compile(*p.Regex, regexp2.None)
		if err != nil {
			return nil, fmt.Errorf("%s.pattern.Regex: %w", field, err)
		}
		return &pattern{re: re}, nil
	}
	return nil, fmt.Errorf("%s.pattern: want String or Regex", field)
}

func parseNormalizer(raw json.RawMessage, field string) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, field)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		seq, err := parseSequence(c.Normalizers, field+".normalizers", parseNormalizer)
		return normalizerSequence(seq), err
	case "NFC":
		return unicodeNormalizer{norm.NFC}, nil
	case "NFD":
		return unicodeNormalizer{norm.NFD}, nil
	case "NFKC":
		return unicodeNormalizer{norm.NFKC}, nil
	case "NFKD":
		return unicodeNormalizer{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNormalizer{}, nil
	case "Strip":
		return stripNormalizer{left: c.StripLeft, right: c.StripRight}, nil
	case "Prepend":
		if c.Prepend == nil {
			return nil, fmt.Errorf("%s.prepend: missing", field)
		}
		return prependNormalizer{*c.Prepend}, nil
	case "Append":
		if c.Append == nil {
			return nil, fmt.Errorf("%s.append: missing", field)
		}
		return appendNormalizer{*c.Append}, nil
	case "Replace":
		p, err := compilePattern(c.Pattern, field)
		if err != nil {
			return nil, err
		}
		if c.Content == nil {
			return nil, fmt.Errorf("%s.content: missing", field)
		}
		return replaceNormalizer{pattern: p, content: *c.Content}, nil
	}
	return nil, unsupported(field, c.Type)
}

var splitBehaviors = map[string]splitBehavior{
	"Removed": splitRemoved, "Isolated": splitIsolated, "MergedWithPrevious": splitMergedWithPrevious,
	"MergedWithNext": splitMergedWithNext, "Contiguous": splitContiguous,
}

func parsePreTokenizer(raw json.RawMessage, field string) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, field)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		seq, err := parseSequence(c.PreTokenizers, field+".pretokenizers", parsePreTokenizer)
		return preTokenizerSequence(seq), err
	case "Split":
		p, err := compilePattern(c.Pattern, field)
		if err != nil {
			return nil, err
		}
		b, ok := splitBehaviors[c.Behavior]
		if !ok {
			return nil, fmt.Errorf("%s.behavior %q not supported", field, c.Behavior)
		}
		return &splitPreTokenizer{pattern: p, behavior: b, invert: c.Invert}, nil
	case "ByteLevel":
		bl := &byteLevelPreTokenizer{addPrefixSpace: c.AddPrefixSpace != nil && *c.AddPrefixSpace}
		if c.UseRegex == nil || *c.UseRegex {
			bl.split = &pattern{fast: matchGPT2}
		}
		return bl, nil
	case "Metaspace":
		ms := &metaspacePreTokenizer{replacement: "\u2581", prepend: "always", split: true}
		if c.Replacement != nil {
			ms.replacement = *c.Replacement
		}
		if utf8.RuneCountInString(ms.replacement) != 1 {
			return nil, fmt.Errorf("%s.replacement %q: want one character", field, ms.replacement)
		}
		switch {
		case c.PrependScheme != "":
			if c.PrependScheme != "always" && c.PrependScheme != "first" && c.PrependScheme != "never" {
				return nil, fmt.Errorf("%s.prepend_scheme %q not supported", field, c.PrependScheme)
			}
			ms.prepend = c.PrependScheme
		case c.AddPrefixSpace != nil && !*c.AddPrefixSpace:
			ms.prepend = "never"
		}
		if c.Split != nil {
			ms.split = *c.Split
		}
		return ms, nil
	case "Digits":
		if c.IndividualDigits {
			return &runeClassPreTokenizer{is: unicode.IsNumber, behavior: splitIsolated, each: true}, nil
		}
		return &runeClassPreTokenizer{is: unicode.IsNumber, behavior: splitContiguous}, nil
	case "WhitespaceSplit":
		return &runeClassPreTokenizer{is: unicode.IsSpace, behavior: splitRemoved}, nil
	case "Punctuation":
		b := splitIsolated
		if c.Behavior != "" {
			var ok bool
			if b, ok = splitBehaviors[c.Behavior]; !ok {
				return nil, fmt.Errorf("%s.behavior %q not supported", field, c.Behavior)
			}
		}
		return &runeClassPreTokenizer{is: func(r rune) bool { return unicode.IsPunct(r) || unicode.IsSymbol(r) && r < 0x80 }, behavior: b, each: true}, nil
	}
	return nil, unsupported(field, c.Type)
}

func (t *Tokenizer) parsePostProcessor(raw json.RawMessage, field string) (postProcessor, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, field)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "ByteLevel":
		return identityProcessor{}, nil
	case "Sequence":
		seq, err := parseSequence(c.Processors, field+".processors", t.parsePostProcessor)
		return postProcessorSequence(seq), err
	case "TemplateProcessing":
		tp := &templateProcessor{}
		for i, itemRaw := range c.Single {
			var item struct {
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
			}
			if err := json.Unmarshal(itemRaw, &item); err != nil {
				return nil, fmt.Errorf("%s.single[%d]: %w", field, i, err)
			}
			switch {
			case item.Sequence != nil:
				tp.items = append(tp.items, templateItem{sequence: true})
			case item.SpecialToken != nil:
				st, ok := c.SpecialTokens[item.SpecialToken.ID]
				if !ok {
					return nil, fmt.Errorf("%s.single[%d]: special token %q not in %s.special_tokens", field, i, item.SpecialToken.ID, field)
				}
				tp.items = append(tp.items, templateItem{special: st.IDs})
			default:
				return nil, fmt.Errorf("%s.single[%d]: want SpecialToken or Sequence", field, i)
			}
		}
		return tp, nil
	case "RobertaProcessing", "BertProcessing":
		cls, err := tokenIDPair(c.Cls, field+".cls")
		if err != nil {
			return nil, err
		}
		sep, err := tokenIDPair(c.Sep, field+".sep")
		if err != nil {
			return nil, err
		}
		return &templateProcessor{items: []templateItem{{special: []int{cls}}, {sequence: true}, {special: []int{sep}}}}, nil
	}
	return nil, unsupported(field, c.Type)
}

func tokenIDPair(raw []json.RawMessage, field string) (int, error) {
	var id int
	if len(raw) != 2 || json.Unmarshal(raw[1], &id) != nil {
		return 0, fmt.Errorf("%s: want [token, id]", field)
	}
	return id, nil
}

func parseDecoder(raw json.RawMessage, field string) (decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	c, err := parseComponent(raw, field)
	if err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		seq, err := parseSequence(c.Decoders, field+".decoders", parseDecoder)
		return decoderSequence(seq), err
	case "ByteLevel":
		return byteLevelDecoder{}, nil
	case "ByteFallback":
		return byteFallbackDecoder{}, nil
	case "Fuse":
		return fuseDecoder{}, nil
	case "Replace":
		p, err := compilePattern(c.Pattern, field)
		if err != nil {
			return nil, err
		}
		if c.Content == nil {
			return nil, fmt.Errorf("%s.content: missing", field)
		}
		return replaceDecoder{pattern: p, content: *c.Content}, nil
	case "Strip":
		if c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return nil, fmt.Errorf("%s.content: want one character", field)
		}
		r, _ := utf8.DecodeRuneInString(*c.Content)
		if c.Start < 0 || c.Stop < 0 {
			return nil, fmt.Errorf("%s.start/stop: negative", field)
		}
		return stripDecoder{content: r, start: c.Start, stop: c.Stop}, nil
	case "Metaspace":
		md := metaspaceDecoder{replacement: '\u2581', prepend: true}
		if c.Replacement != nil {
			if utf8.RuneCountInString(*c.Replacement) != 1 {
				return nil, fmt.Errorf("%s.replacement %q: want one character", field, *c.Replacement)
			}
			md.replacement, _ = utf8.DecodeRuneInString(*c.Replacement)
		}
		if c.PrependScheme == "never" || (c.PrependScheme == "" && c.AddPrefixSpace != nil && !*c.AddPrefixSpace) {
			md.prepend = false
		}
		return md, nil
	}
	return nil, unsupported(field, c.Type)
}

// applyConfig reads tokenizer_config.json (nil data: no config file).
func (t *Tokenizer) applyConfig(data []byte) error {
	if data == nil {
		return nil
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	t.specialNames = make(map[string]any)
	for _, name := range []string{"bos_token", "eos_token", "unk_token", "pad_token"} {
		tok, ok, err := configToken(cfg[name], name)
		if err != nil {
			return err
		}
		if !ok {
			t.specialNames[name] = nil
			continue
		}
		t.specialNames[name] = tok
		id, found := t.TokenID(tok)
		if !found {
			// transformers adds a configured special token the vocabulary lacks.
			id = t.addSpecialToken(tok)
		}
		switch name {
		case "bos_token":
			t.bos = id
		case "eos_token":
			t.eos = id
		}
	}
	var clean bool
	if raw, ok := cfg["clean_up_tokenization_spaces"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &clean); err != nil {
			return fmt.Errorf("clean_up_tokenization_spaces: %w", err)
		}
	}
	t.cleanUpSpaces = clean
	if raw, ok := cfg["model_max_length"]; ok && !isNull(raw) {
		var n float64
		if err := json.Unmarshal(raw, &n); err != nil {
			return fmt.Errorf("model_max_length: %w", err)
		}
		if n > 0 && n < 1<<40 {
			t.maxLength = int(n)
		}
	}
	if err := t.configPostProcessor(cfg); err != nil {
		return err
	}
	if raw, ok := cfg["chat_template"]; ok && !isNull(raw) {
		src, err := chatTemplateSource(raw)
		if err != nil {
			return err
		}
		t.setChatTemplate(src, "tokenizer_config.json: chat_template")
	}
	return nil
}

// configPostProcessor mirrors transformers 5 (TokenizersBackend.update_post_processor): when
// tokenizer_config.json sets add_bos_token or add_eos_token (or tokenizer.json has no
// post-processor), they replace tokenizer.json's post-processor; both default to false, and a flag
// whose token is not configured is dropped.
func (t *Tokenizer) configPostProcessor(cfg map[string]json.RawMessage) error {
	_, hasBOS := cfg["add_bos_token"]
	_, hasEOS := cfg["add_eos_token"]
	if !hasBOS && !hasEOS && t.post != nil {
		return nil
	}
	var addBOS, addEOS bool
	for name, dst := range map[string]*bool{"add_bos_token": &addBOS, "add_eos_token": &addEOS} {
		if raw, ok := cfg[name]; ok && !isNull(raw) {
			if err := json.Unmarshal(raw, dst); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	tp := &templateProcessor{}
	if addBOS && t.bos >= 0 {
		tp.items = append(tp.items, templateItem{special: []int{t.bos}})
	}
	tp.items = append(tp.items, templateItem{sequence: true})
	if addEOS && t.eos >= 0 {
		tp.items = append(tp.items, templateItem{special: []int{t.eos}})
	}
	t.post = tp
	return nil
}

// addSpecialToken appends a special added token after the current vocabulary and returns its id.
func (t *Tokenizer) addSpecialToken(content string) int {
	tok := &addedToken{id: t.vocabSize, content: content, special: true}
	t.vocabSize++
	t.added[tok.id] = tok
	t.addedByContent[content] = tok.id
	raw := make([]*addedToken, 0, len(t.added))
	for _, a := range t.added {
		if !a.normalized {
			raw = append(raw, a)
		}
	}
	t.rawMatcher = newAddedMatcher(raw)
	return tok.id
}

// configToken reads a special-token field: a string, an AddedToken object or null.
func configToken(raw json.RawMessage, field string) (string, bool, error) {
	if isNull(raw) {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == nil {
		return "", false, fmt.Errorf("%s: want a string or an object with content", field)
	}
	return *obj.Content, true, nil
}

// chatTemplateSource picks the template: a string, or the one named "default" of a list.
func chatTemplateSource(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", errors.New("chat_template: want a string or a list of {name, template}")
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return "", errors.New("chat_template: the list has no template named \"default\"")
}

// parseSequence parses the components of a Sequence (field names the list,
// e.g. "normalizer.normalizers"), dropping the null ones.
func parseSequence[T comparable](subs []json.RawMessage, field string, parse func(json.RawMessage, string) (T, error)) ([]T, error) {
	var seq []T
	var none T
	for i, sub := range subs {
		c, err := parse(sub, fmt.Sprintf("%s[%d]", field, i))
		if err != nil {
			return nil, err
		}
		if c != none {
			seq = append(seq, c)
		}
	}
	return seq, nil
}
