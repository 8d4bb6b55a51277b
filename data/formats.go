package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Alpaca prompt templates (the alpaca-lora form, with a newline after
// "### Response:"), used for instruction/input/output lines.
const (
	alpacaWithInput = "Below is an instruction that describes a task, paired with an input that provides further context. " +
		"Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n"
	alpacaNoInput = "Below is an instruction that describes a task. " +
		"Write a response that appropriately completes the request.\n\n" +
		"### Instruction:\n%s\n\n### Response:\n"
)

// AlpacaPrompt renders the Alpaca prompt for an instruction and an optional
// input.
func AlpacaPrompt(instruction, input string) string {
	if input == "" {
		return fmt.Sprintf(alpacaNoInput, instruction)
	}
	return fmt.Sprintf(alpacaWithInput, instruction, input)
}

// parser turns lines into examples; the first valid line fixes the format.
type parser struct {
	name       string
	tok        Tokenizer
	opts       Options
	format     string
	formatLine int
	endOfTurn  []int // chat end-of-turn token ids, once looked up
}

// detectFormat names the format a line's keys imply ("" when none).
func detectFormat(obj map[string]json.RawMessage) string {
	has := func(k string) bool { _, ok := obj[k]; return ok }
	switch {
	case has("messages"):
		return FormatMessages
	case has("input_ids"):
		return FormatTokenized
	case has("prompt") && has("completion"):
		return FormatPromptCompletion
	case has("instruction") && has("output"):
		return FormatAlpaca
	case has("text"):
		return FormatText
	}
	return ""
}

func (p *parser) parseLine(line []byte, lineNo int) (*Example, error) {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 {
		return nil, errors.New("empty line")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &obj); err != nil || obj == nil {
		if trimmed[0] != '{' && json.Valid(trimmed) {
			return nil, fmt.Errorf("want a JSON object, got %s", jsonKind(trimmed))
		}
		return nil, fmt.Errorf("malformed JSON: %v", err)
	}
	format := detectFormat(obj)
	if p.format == "" {
		if format == "" {
			return nil, fmt.Errorf("no known format in keys %v: want text, prompt+completion, messages, "+
				"instruction+output (Alpaca) or input_ids", sortedKeys(obj))
		}
		if err := p.checkTokenizer(format); err != nil {
			return nil, &fatalError{err}
		}
		ex, err := p.parse(format, obj)
		if err == nil {
			p.format, p.formatLine = format, lineNo
		}
		return ex, err
	}
	if format != "" && format != p.format {
		return nil, fmt.Errorf("line is in format %s but the file is in format %s (from line %d)", format, p.format, p.formatLine)
	}
	return p.parse(p.format, obj)
}

// checkTokenizer reports a tokenizer that cannot serve a format.
func (p *parser) checkTokenizer(format string) error {
	if format == FormatTokenized {
		return nil
	}
	if p.tok == nil {
		return fmt.Errorf("format %s needs a tokenizer", format)
	}
	switch format {
	case FormatPromptCompletion, FormatAlpaca:
		if _, ok := p.tok.EOS(); !ok {
			return fmt.Errorf("format %s appends EOS to completions, but the tokenizer has no EOS token", format)
		}
	case FormatMessages:
		if !p.tok.HasChatTemplate() {
			return errors.New("format messages needs a chat template, but the tokenizer has none")
		}
	}
	return nil
}

func (p *parser) parse(format string, obj map[string]json.RawMessage) (*Example, error) {
	switch format {
	case FormatText:
		return p.parseText(obj)
	case FormatPromptCompletion:
		return p.parsePromptCompletion(obj)
	case FormatAlpaca:
		return p.parseAlpaca(obj)
	case FormatMessages:
		return p.parseMessages(obj)
	case FormatTokenized:
		return p.parseTokenized(obj)
	}
	return nil, fmt.Errorf("unknown format %q", format)
}

func (p *parser) parseText(obj map[string]json.RawMessage) (*Example, error) {
	text, err := stringField(obj, "text", true)
	if err != nil {
		return nil, err
	}
	ids, err := toInt32(p.tok.Encode(text, true))
	if err != nil {
		return nil, err
	}
	return &Example{IDs: ids, Labels: slices.Clone(ids)}, nil
}

func (p *parser) parsePromptCompletion(obj map[string]json.RawMessage) (*Example, error) {
	prompt, err := stringField(obj, "prompt", true)
	if err != nil {
		return nil, err
	}
	completion, err := stringField(obj, "completion", true)
	if err != nil {
		return nil, err
	}
	answer, err := answerField(obj, completion)
	if err != nil {
		return nil, err
	}
	return p.completionExample(prompt, completion, answer)
}

func (p *parser) parseAlpaca(obj map[string]json.RawMessage) (*Example, error) {
	instruction, err := stringField(obj, "instruction", true)
	if err != nil {
		return nil, err
	}
	input, err := stringField(obj, "input", false)
	if err != nil {
		return nil, err
	}
	output, err := stringField(obj, "output", true)
	if err != nil {
		return nil, err
	}
	answer, err := answerField(obj, output)
	if err != nil {
		return nil, err
	}
	return p.completionExample(AlpacaPrompt(instruction, input), output, answer)
}

// completionExample scores the completion and the EOS appended to it (as TRL
// does), not the prompt.
func (p *parser) completionExample(prompt, completion, answer string) (*Example, error) {
	eos, _ := p.tok.EOS()
	promptIDs := p.tok.Encode(prompt, true)
	completionIDs := p.tok.Encode(completion, false)
	if len(completionIDs) == 0 || completionIDs[len(completionIDs)-1] != eos {
		completionIDs = append(completionIDs, eos)
	}
	ids, err := toInt32(append(slices.Clip(promptIDs), completionIDs...))
	if err != nil {
		return nil, err
	}
	labels := slices.Clone(ids)
	for t := range promptIDs {
		labels[t] = IgnoreIndex
	}
	return &Example{IDs: ids, Labels: labels, Prompt: prompt, PromptLen: len(promptIDs), Answer: answer}, nil
}

func (p *parser) parseTokenized(obj map[string]json.RawMessage) (*Example, error) {
	ids, err := p.intArray(obj, "input_ids", false)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, errors.New(`field "input_ids" is empty`)
	}
	labels := slices.Clone(ids)
	if raw, ok := obj["labels"]; ok && !isNull(raw) {
		if labels, err = p.intArray(obj, "labels", true); err != nil {
			return nil, err
		}
		if len(labels) != len(ids) {
			return nil, fmt.Errorf(`field "labels" has %d entries but "input_ids" has %d`, len(labels), len(ids))
		}
	}
	return &Example{IDs: ids, Labels: labels}, nil
}

// intArray parses an array of token ids (labels: -100 allowed) strictly:
// JSON integers only, no floats or quoted numbers.
func (p *parser) intArray(obj map[string]json.RawMessage, key string, labels bool) ([]int32, error) {
	raw, ok := obj[key]
	if !ok {
		return nil, fmt.Errorf("missing field %q", key)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil || isNull(raw) {
		return nil, fmt.Errorf("field %q: want an array of integers, got %s", key, jsonKind(raw))
	}
	out := make([]int32, len(items))
	for i, item := range items {
		v, err := strconv.ParseInt(string(item), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("field %q[%d]: want an integer, got %s", key, i, truncateForMessage(item))
		}
		switch {
		case labels && v == IgnoreIndex:
		case v < 0:
			if labels {
				return nil, fmt.Errorf("field %q[%d] = %d: labels are token ids or %d", key, i, v, IgnoreIndex)
			}
			return nil, fmt.Errorf("field %q[%d] = %d: token ids are non-negative", key, i, v)
		case v > math.MaxInt32:
			return nil, fmt.Errorf("field %q[%d] = %d: too large for a token id", key, i, v)
		case p.opts.VocabSize > 0 && v >= int64(p.opts.VocabSize):
			return nil, fmt.Errorf("field %q[%d] = %d: outside the vocabulary (size %d)", key, i, v, p.opts.VocabSize)
		}
		out[i] = int32(v)
	}
	return out, nil
}

// stringField reads a string field; optional fields may be missing or null.
func stringField(obj map[string]json.RawMessage, key string, required bool) (string, error) {
	raw, ok := obj[key]
	if !ok || isNull(raw) {
		if required {
			if ok {
				return "", fmt.Errorf("field %q is null", key)
			}
			return "", fmt.Errorf("missing field %q", key)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("field %q: want a string, got %s", key, jsonKind(raw))
	}
	if required && s == "" {
		return "", fmt.Errorf("field %q is empty", key)
	}
	return s, nil
}

// answerField reads the optional "answer" (a string or a number, as in the
// math/commonsense sets), defaulting to fallback.
func answerField(obj map[string]json.RawMessage, fallback string) (string, error) {
	raw, ok := obj["answer"]
	if !ok || isNull(raw) {
		return fallback, nil
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
		return string(raw), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf(`field "answer": want a string or a number, got %s`, jsonKind(raw))
	}
	return s, nil
}

func toInt32(ids []int) ([]int32, error) {
	out := make([]int32, len(ids))
	for i, id := range ids {
		if id < 0 || id > math.MaxInt32 {
			return nil, fmt.Errorf("tokenizer returned id %d", id)
		}
		out[i] = int32(id)
	}
	return out, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// jsonKind names the JSON type of a value for error messages.
func jsonKind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch c := raw[0]; {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return "invalid JSON"
}

func truncateForMessage(b []byte) string {
	s := string(b)
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

func sortedKeys(obj map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) > 10 {
		keys = append(keys[:10], "...")
	}
	return keys
}
