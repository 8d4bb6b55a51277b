package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/ardanlabs/jinja"
)

// maxJSONDepth bounds the nesting of chat messages, so hostile input cannot exhaust the stack.
const maxJSONDepth = 256

func (t *Tokenizer) setChatTemplate(src, origin string) {
	t.chatSource = src
	t.chat, t.chatErr = nil, nil
	tmpl, err := compileTemplate(src)
	if err != nil {
		t.chatErr = fmt.Errorf("%s: %w", origin, err)
		return
	}
	t.chat = tmpl
}

// compileTemplate compiles with the engine's panics turned into errors.
func compileTemplate(src string) (tmpl *jinja.Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			tmpl, err = nil, fmt.Errorf("template engine panic: %v", r)
		}
	}()
	return jinja.Compile(src)
}

// ApplyChatTemplate renders the chat template like HF apply_chat_template(messages,
// tokenize=False, add_generation_prompt=...). messages is the raw JSON array of message objects,
// so key order is kept (Qwen3's templates need insertion-ordered dicts and Python-json tojson).
// The ids HF returns with tokenize=True are Encode(text, false).
func (t *Tokenizer) ApplyChatTemplate(messages json.RawMessage, addGenerationPrompt bool) (string, error) {
	if t.chatSource == "" {
		return "", errors.New("tokenizer_config.json: chat_template: missing (the tokenizer has no chat template)")
	}
	if t.chatErr != nil {
		return "", t.chatErr
	}
	msgs, err := jsonToValue(messages)
	if err != nil {
		return "", fmt.Errorf("messages: %w", err)
	}
	if !msgs.IsList() {
		return "", errors.New("messages: want a JSON array of message objects")
	}
	for i, m := range msgs.AsList().Items {
		if !m.IsDict() {
			return "", fmt.Errorf("messages[%d]: want an object", i)
		}
	}
	data := map[string]jinja.Value{
		"messages":              msgs,
		"add_generation_prompt": jinja.NewBool(addGenerationPrompt),
		"tools":                 jinja.None(),
		"documents":             jinja.None(),
	}
	for _, name := range []string{"bos_token", "eos_token", "unk_token", "pad_token"} {
		if s, ok := t.specialNames[name].(string); ok {
			data[name] = jinja.NewString(s)
		}
	}
	return renderTemplate(t.chat, data)
}

func renderTemplate(tmpl *jinja.Template, data map[string]jinja.Value) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template: template engine panic: %v", r)
		}
	}()
	out, err = tmpl.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	return out, nil
}

// jsonToValue decodes JSON into template values, keeping object key order and integer-ness.
func jsonToValue(raw json.RawMessage) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return jinja.Value{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return jinja.Value{}, errors.New("trailing data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxJSONDepth {
		return jinja.Value{}, fmt.Errorf("nested deeper than %d levels", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Value{}, fmt.Errorf("invalid JSON: %w", err)
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '[':
			var items []jinja.Value
			for dec.More() {
				item, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Value{}, err
				}
				items = append(items, item)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Value{}, fmt.Errorf("invalid JSON: %w", err)
			}
			return jinja.NewList(items), nil
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				keyTok, err := dec.Token()
				if err != nil {
					return jinja.Value{}, fmt.Errorf("invalid JSON: %w", err)
				}
				key, ok := keyTok.(string)
				if !ok {
					return jinja.Value{}, errors.New("invalid JSON: object key is not a string")
				}
				val, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Value{}, err
				}
				d.AsDict().Set(key, val)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Value{}, fmt.Errorf("invalid JSON: %w", err)
			}
			return d, nil
		}
		return jinja.Value{}, fmt.Errorf("invalid JSON: unexpected %q", v)
	case json.Number:
		return jinja.FromGoValue(v), nil
	case string:
		return jinja.NewString(v), nil
	case bool:
		return jinja.NewBool(v), nil
	case nil:
		return jinja.None(), nil
	}
	return jinja.Value{}, fmt.Errorf("invalid JSON: unexpected token %v", tok)
}
