package data

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

// fakeTok is a tiny deterministic tokenizer for tests: one id per byte, and a
// few special tokens recognised anywhere in the text.
type fakeTok struct {
	noEOS, noTemplate bool
	template          templateKind
}

type templateKind int

const (
	templatePlain       templateKind = iota // honours add_generation_prompt
	templateAlwaysGen                       // appends the generation prompt always (the fixtures' Llama 3 template)
	templateThinkLast                       // marks the last assistant message only (Qwen3's empty <think> block)
	templateCountHeader                     // headers carry the message count: renders are not prefixes of each other
	templateFails                           // ApplyChatTemplate returns an error
	templateLlama3Like                      // always adds the generation prompt, ends turns with <|eot_id|> (not EOS)
)

const (
	fakeBOS = 256 + iota
	fakeEOS
	fakeUser
	fakeAssistant
	fakeSystem
	fakeThink
	fakeEOT
)

var fakeSpecials = []struct {
	text string
	id   int
}{
	{"<|bos|>", fakeBOS}, {"<|end|>", fakeEOS}, {"<|user|>", fakeUser},
	{"<|assistant|>", fakeAssistant}, {"<|system|>", fakeSystem}, {"<think>", fakeThink}, {"<|eot_id|>", fakeEOT},
}

const fakeVocab = 263

func (t *fakeTok) Encode(text string, addSpecial bool) []int {
	var ids []int
	if addSpecial {
		ids = append(ids, fakeBOS)
	}
next:
	for i := 0; i < len(text); {
		for _, s := range fakeSpecials {
			if s.id == fakeEOS && t.noEOS {
				continue // without EOS, <|end|> is plain text
			}
			if strings.HasPrefix(text[i:], s.text) {
				ids = append(ids, s.id)
				i += len(s.text)
				continue next
			}
		}
		ids = append(ids, int(text[i]))
		i++
	}
	return ids
}

func (t *fakeTok) EOS() (int, bool) { return fakeEOS, !t.noEOS }

func (t *fakeTok) HasChatTemplate() bool { return !t.noTemplate }

func (t *fakeTok) ApplyChatTemplate(messages json.RawMessage, addGenerationPrompt bool) (string, error) {
	if t.template == templateFails {
		return "", errors.New("template exploded")
	}
	var msgs []struct{ Role, Content string }
	if err := json.Unmarshal(messages, &msgs); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("<|bos|>")
	for i, m := range msgs {
		b.WriteString("<|" + m.Role + "|>")
		if t.template == templateCountHeader {
			b.WriteString(strconv.Itoa(len(msgs)))
		}
		if t.template == templateThinkLast && m.Role == "assistant" && i == len(msgs)-1 {
			b.WriteString("<think>")
		}
		if t.template == templateLlama3Like {
			b.WriteString(m.Content + "<|eot_id|>")
		} else {
			b.WriteString(m.Content + "<|end|>")
		}
	}
	if addGenerationPrompt || t.template == templateAlwaysGen || t.template == templateLlama3Like {
		b.WriteString("<|assistant|>")
	}
	return b.String(), nil
}

// ids spells a test sequence: strings become one id per byte, ints stay.
func ids(parts ...any) []int32 {
	var out []int32
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			for i := 0; i < len(v); i++ {
				out = append(out, int32(v[i]))
			}
		case int:
			out = append(out, int32(v))
		default:
			panic("ids: bad part")
		}
	}
	return out
}

// masked returns n IgnoreIndex labels.
func masked(n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = IgnoreIndex
	}
	return out
}

func cat(parts ...[]int32) []int32 {
	var out []int32
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
