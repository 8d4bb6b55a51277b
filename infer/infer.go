// Package infer turns a model and its tokenizer into text generation: a
// prompt (text, chat messages or ids) in, the completion out as text, streamed
// as it is produced, ending at the model's end-of-sequence ids, a stop string
// or a token budget. Decoding runs on a model.Generator (a KV cache), so each
// new token costs O(context). A Session owns its generator (the KV cache);
// the model, its adapters and the tokenizer stay the caller's.
package infer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sparselora/sparselora/model"
)

// Tokenizer is what generation needs of a tokenizer; *tokenizer.Tokenizer
// satisfies it.
type Tokenizer interface {
	Encode(text string, addSpecialTokens bool) []int
	Decode(ids []int, skipSpecialTokens bool) string
	EOS() (int, bool)
	HasChatTemplate() bool
	ApplyChatTemplate(messages json.RawMessage, addGenerationPrompt bool) (string, error)
}

// Session generates with one model, reusing one KV cache.
type Session struct {
	m   *model.Model
	tok Tokenizer
	gen *model.Generator
	// EOS are the ids that end a completion: generation_config.json's
	// eos_token_id (one or a list) and the tokenizer's eos_token.
	EOS []int32
}

// NewSession prepares generation of up to maxSeq positions (prompt and
// completion) with m and its attached adapters; modelDir is read for
// generation_config.json.
func NewSession(m *model.Model, tok Tokenizer, modelDir string, maxSeq int) (*Session, error) {
	if tok == nil {
		return nil, errors.New("infer: a tokenizer is needed (tokenizer.json in the model directory)")
	}
	maxSeq = min(maxSeq, m.Rope.Seq)
	gen, err := m.NewGenerator(maxSeq, 0)
	if err != nil {
		return nil, err
	}
	eos, err := EOSIDs(modelDir, tok)
	if err != nil {
		gen.Release()
		return nil, err
	}
	return &Session{m: m, tok: tok, gen: gen, EOS: eos}, nil
}

// Release frees the KV cache.
func (s *Session) Release() { s.gen.Release() }

// MaxSeq is the most positions a prompt and its completion may take.
func (s *Session) MaxSeq() int { return s.gen.MaxSeq + 1 }

// EOSIDs reads the end-of-sequence ids of a model directory's
// generation_config.json (an int or a list) and adds the tokenizer's.
func EOSIDs(modelDir string, tok Tokenizer) ([]int32, error) {
	var ids []int32
	path := filepath.Join(modelDir, "generation_config.json")
	if raw, err := os.ReadFile(path); err == nil {
		var cfg struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(cfg.EOS) > 0 && string(cfg.EOS) != "null" {
			var one int32
			var list []int32
			switch {
			case json.Unmarshal(cfg.EOS, &one) == nil:
				ids = append(ids, one)
			case json.Unmarshal(cfg.EOS, &list) == nil:
				ids = append(ids, list...)
			default:
				return nil, fmt.Errorf("%s: eos_token_id %s: want an id or a list of ids", path, cfg.EOS)
			}
		}
	}
	if id, ok := tok.EOS(); ok && !slices.Contains(ids, int32(id)) {
		ids = append(ids, int32(id))
	}
	return ids, nil
}

// Options control one completion.
type Options struct {
	MaxNewTokens int
	// Sampler picks each token; nil is greedy.
	Sampler model.Sampler
	// Stop ends the completion before the first occurrence of any of these
	// strings (which is not returned).
	Stop []string
	// OnText receives the completion's text as it grows, piece by piece
	// (streaming); an error from it ends generation.
	OnText func(string) error
}

// Completion is a prompt's continuation.
type Completion struct {
	Text string
	IDs  []int32
	// Reason is "eos", "stop" or "length".
	Reason string
}

// errStop ends generation when a stop string appeared.
var errStop = errors.New("stop string")

// Complete continues prompt ids.
func (s *Session) Complete(ctx context.Context, prompt []int32, opts Options) (Completion, error) {
	if len(prompt) == 0 {
		return Completion{}, errors.New("infer: empty prompt")
	}
	n := min(opts.MaxNewTokens, s.MaxSeq()-len(prompt))
	if n <= 0 {
		return Completion{}, fmt.Errorf("infer: a prompt of %d tokens leaves no room to generate: the model has %d positions", len(prompt), s.m.Rope.Seq)
	}
	sampler := opts.Sampler
	if sampler == nil {
		sampler = model.Greedy()
	}
	var out []int32
	emitted := ""
	c := Completion{Reason: "length"}
	onToken := func(id int32) error {
		if slices.Contains(s.EOS, id) {
			c.Reason = "eos"
			return nil
		}
		out = append(out, id)
		text := s.decode(out)
		if cut, ok := firstStop(text, opts.Stop); ok {
			text, c.Reason = text[:cut], "stop"
			if err := emit(opts.OnText, text, &emitted); err != nil {
				return err
			}
			return errStop
		}
		// A trailing U+FFFD is usually a multi-byte character whose bytes
		// have not all arrived: hold it back until they have.
		if strings.HasSuffix(text, string(utf8.RuneError)) {
			return nil
		}
		return emit(opts.OnText, text, &emitted)
	}
	_, err := s.gen.Generate(ctx, prompt, n, sampler, model.GenerateOptions{Stop: s.EOS, OnToken: onToken})
	if err != nil && !errors.Is(err, errStop) {
		return c, err
	}
	c.IDs = out
	if c.Reason == "stop" {
		c.Text = emitted
		return c, nil
	}
	c.Text = s.decode(out)
	if err := emit(opts.OnText, c.Text, &emitted); err != nil {
		return c, err
	}
	return c, nil
}

func (s *Session) decode(ids []int32) string {
	ints := make([]int, len(ids))
	for i, id := range ids {
		ints[i] = int(id)
	}
	return s.tok.Decode(ints, true)
}

// emit sends the part of text after what was emitted before.
func emit(onText func(string) error, text string, emitted *string) error {
	if !strings.HasPrefix(text, *emitted) {
		// Decoding one more token changed earlier text (rare: merged
		// whitespace); streaming can only go forward, so send nothing now.
		return nil
	}
	delta := text[len(*emitted):]
	*emitted = text
	if delta == "" || onText == nil {
		return nil
	}
	return onText(delta)
}

// firstStop is the index of the earliest stop string in text.
func firstStop(text string, stops []string) (int, bool) {
	best, found := len(text), false
	for _, s := range stops {
		if s == "" {
			continue
		}
		if i := strings.Index(text, s); i >= 0 && i < best {
			best, found = i, true
		}
	}
	return best, found
}

// PromptText encodes a plain-text prompt as the model was trained to see it
// (with the tokenizer's special tokens, e.g. BOS).
func (s *Session) PromptText(text string) []int32 { return toInt32(s.tok.Encode(text, true)) }

// PromptChat renders messages with the chat template and the generation
// prompt, and encodes them.
func (s *Session) PromptChat(messages json.RawMessage) ([]int32, error) {
	if !s.tok.HasChatTemplate() {
		return nil, errors.New("infer: the tokenizer has no chat template (tokenizer_config.json chat_template)")
	}
	text, err := s.tok.ApplyChatTemplate(messages, true)
	if err != nil {
		return nil, err
	}
	return toInt32(s.tok.Encode(text, false)), nil
}

func toInt32(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}
