package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// chatMessage is one entry of a "messages" line; raw keeps every field (tool
// calls, names, ...) for the chat template.
type chatMessage struct {
	raw     json.RawMessage
	role    string
	content string
}

func decodeMessages(obj map[string]json.RawMessage) ([]chatMessage, error) {
	raw := obj["messages"]
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil || isNull(raw) {
		return nil, fmt.Errorf(`field "messages": want an array of {role, content} objects, got %s`, jsonKind(raw))
	}
	if len(items) == 0 {
		return nil, errors.New(`field "messages" is empty`)
	}
	msgs := make([]chatMessage, len(items))
	for i, item := range items {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(item, &fields); err != nil || isNull(item) {
			return nil, fmt.Errorf("messages[%d]: want an object, got %s", i, jsonKind(item))
		}
		role, err := stringField(fields, "role", true)
		if err != nil {
			return nil, fmt.Errorf("messages[%d]: %w", i, err)
		}
		if _, ok := fields["content"]; !ok {
			return nil, fmt.Errorf(`messages[%d]: missing field "content"`, i)
		}
		content, err := stringField(fields, "content", false)
		if err != nil {
			return nil, fmt.Errorf("messages[%d]: %w", i, err)
		}
		msgs[i] = chatMessage{raw: item, role: role, content: content}
	}
	return msgs, nil
}

// parseMessages scores the assistant turns of a conversation.
//
// For assistant message i, its turn starts after the tokens of
// render(messages[:i], add_generation_prompt) — which must be a token prefix
// of the whole conversation's tokens, else the line is rejected. The turn ends
// where the tokens of render(messages[:i+1]) stop agreeing with the whole
// conversation, and no later than just after its first end-of-turn token (EOS,
// or a known chat end-of-turn token such as <|eot_id|> or <|im_end|>). The
// looser end rule is needed by real templates: the Llama 3 template of the
// fixtures appends the assistant header even without add_generation_prompt
// (so render(messages[:i+1]) is not a prefix of a conversation that goes on,
// and would score the trailing header), and Qwen3's renders an empty <think>
// block for the last assistant turn only. When the two renders disagree from
// the turn's first token, the turn ends at its first end-of-turn token.
func (p *parser) parseMessages(obj map[string]json.RawMessage) (*Example, error) {
	msgs, err := decodeMessages(obj)
	if err != nil {
		return nil, err
	}
	render := func(n int, generationPrompt bool) (string, error) {
		var arr bytes.Buffer
		arr.WriteByte('[')
		for i, m := range msgs[:n] {
			if i > 0 {
				arr.WriteByte(',')
			}
			arr.Write(m.raw)
		}
		arr.WriteByte(']')
		text, err := p.tok.ApplyChatTemplate(arr.Bytes(), generationPrompt)
		if err != nil {
			return "", fmt.Errorf("chat template on messages[:%d]: %w", n, err)
		}
		return text, nil
	}
	full, err := render(len(msgs), false)
	if err != nil {
		return nil, err
	}
	if err := checkRendered(msgs, full); err != nil {
		return nil, err
	}
	fullIDs := p.tok.Encode(full, false)
	ids, err := toInt32(fullIDs)
	if err != nil {
		return nil, err
	}
	labels := make([]int32, len(ids))
	for t := range labels {
		labels[t] = IgnoreIndex
	}
	endOfTurn := p.endOfTurnIDs()
	ex := &Example{IDs: ids, Labels: labels}
	found := false
	for i, m := range msgs {
		if m.role != "assistant" {
			continue
		}
		prefix, err := render(i, true)
		if err != nil {
			return nil, err
		}
		prefixIDs := p.tok.Encode(prefix, false)
		start := len(prefixIDs)
		if commonPrefixLen(prefixIDs, fullIDs) != start {
			return nil, fmt.Errorf("messages[%d]: the chat template's tokens up to this assistant turn (with the generation prompt) "+
				"are not a prefix of the whole conversation's tokens, so its scored tokens cannot be located", i)
		}
		end := len(fullIDs)
		if i+1 < len(msgs) {
			upto, err := render(i+1, false)
			if err != nil {
				return nil, err
			}
			end = commonPrefixLen(p.tok.Encode(upto, false), fullIDs)
		}
		diverged := end <= start
		if diverged {
			end = len(fullIDs)
		}
		turnEnd := slices.IndexFunc(fullIDs[start:end], func(id int) bool { return slices.Contains(endOfTurn, id) })
		switch {
		case turnEnd >= 0:
			end = start + turnEnd + 1
		case diverged:
			return nil, fmt.Errorf("messages[%d]: cannot locate the end of this assistant turn: the template renders it "+
				"differently as the last message and no end-of-turn token follows it", i)
		}
		copy(labels[start:end], ids[start:end])
		ex.Prompt, ex.PromptLen, ex.Answer = prefix, start, m.content
		found = true
	}
	if !found {
		return nil, errors.New("no assistant message to learn from")
	}
	if ex.Answer, err = answerField(obj, ex.Answer); err != nil {
		return nil, err
	}
	return ex, nil
}

// endOfTurnIDs lists the tokenizer's EOS and the end-of-turn tokens of
// common chat templates (Llama 3, Qwen/ChatML, Phi-3, Gemma) that it has as
// single tokens.
func (p *parser) endOfTurnIDs() []int {
	endOfTurnMarkers := [...]string{"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"}
	if p.endOfTurn != nil {
		return p.endOfTurn
	}
	p.endOfTurn = []int{}
	if eos, ok := p.tok.EOS(); ok {
		p.endOfTurn = append(p.endOfTurn, eos)
	}
	lookup, hasLookup := p.tok.(interface{ TokenID(string) (int, bool) })
	for _, marker := range endOfTurnMarkers {
		if hasLookup {
			if id, ok := lookup.TokenID(marker); ok {
				p.endOfTurn = append(p.endOfTurn, id)
			}
		} else if enc := p.tok.Encode(marker, false); len(enc) == 1 {
			p.endOfTurn = append(p.endOfTurn, enc[0])
		}
	}
	return p.endOfTurn
}

func commonPrefixLen(a, b []int) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// checkRendered fails when the chat template left out a message of a role it
// does not know: templates render only the roles they know, so a mistyped role
// ("usr", "human") would otherwise vanish from the training text without a
// word. Messages of the usual roles are the template's business (some drop
// system prompts on purpose; Qwen3 rewrites earlier assistant turns).
func checkRendered(msgs []chatMessage, rendered string) error {
	for i, m := range msgs {
		content := strings.TrimSpace(m.content)
		if slices.Contains(knownRoles, m.role) || content == "" || strings.Contains(rendered, content) {
			continue
		}
		return fmt.Errorf("messages[%d]: role %q: the chat template does not render this message; is the role mistyped? (usual roles: %s)",
			i, m.role, strings.Join(knownRoles, ", "))
	}
	return nil
}

// knownRoles are the roles chat templates of HF models use.
var knownRoles = []string{"system", "user", "assistant", "tool", "developer", "ipython", "function"}
