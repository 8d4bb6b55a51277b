package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sparselora/sparselora/tokenizer"
)

// maxTokenizeLine bounds one JSONL input line (a whole document or conversation).
const maxTokenizeLine = 64 << 20

func runTokenize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tokenize", "tokenize --tokenizer DIR [FILE.jsonl]\n\n"+
		"Reads JSONL (FILE, or stdin when absent or \"-\") and writes one JSON line per input line:\n"+
		"  {\"text\": ...[, \"add_special_tokens\": false]}            -> {\"ids\": [...]}\n"+
		"  {\"messages\": [...][, \"add_generation_prompt\": true]}     -> {\"text\": ..., \"ids\": [...]}  (chat template)\n"+
		"  {\"ids\": [...][, \"skip_special_tokens\": true]}            -> {\"text\": ...}\n"+
		"as Hugging Face tokenizer(text), apply_chat_template and decode(ids) do. Blank lines are skipped.",
		stdout, stderr)
	dir := fs.String("tokenizer", "", "model or tokenizer directory holding tokenizer.json (+ tokenizer_config.json)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if len(fs.Args()) > 1 {
		fmt.Fprintf(fs.Output(), "sparselora tokenize: unexpected argument %q after FILE.jsonl (run with --help)\n", fs.Arg(1))
		return errUsage
	}
	if *dir == "" {
		fmt.Fprintln(fs.Output(), "sparselora tokenize: missing --tokenizer DIR (run with --help)")
		return errUsage
	}
	tok, err := tokenizer.Load(*dir)
	if err != nil {
		return err
	}
	in, name := io.Reader(os.Stdin), "stdin"
	if path := fs.Arg(0); path != "" && path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, path
	}
	return tokenizeStream(ctx, tok, in, name, stdout)
}

// tokenizeStream converts each JSONL line of in; errors name the input and the line number.
func tokenizeStream(ctx context.Context, tok *tokenizer.Tokenizer, in io.Reader, name string, stdout io.Writer) error {
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false) // keep "<|im_start|>" readable, as Python's json does
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxTokenizeLine)
	line := 0
	for sc.Scan() {
		line++
		if err := ctx.Err(); err != nil {
			return err
		}
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		result, err := tokenizeLine(tok, raw)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", name, line, err)
		}
		if err := enc.Encode(result); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return scanError(name, line+1, err, maxTokenizeLine)
	}
	return out.Flush()
}

// scanError names the JSONL line a bufio.Scanner stopped at, and says what
// "token too long" means there.
func scanError(name string, line int, err error, maxLine int) error {
	if errors.Is(err, bufio.ErrTooLong) {
		return fmt.Errorf("%s:%d: line longer than %d MiB", name, line, maxLine>>20)
	}
	return fmt.Errorf("%s:%d: %w", name, line, err)
}

func tokenizeLine(tok *tokenizer.Tokenizer, raw []byte) (any, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			// Valid JSON of another kind: say which, not which Go type it missed.
			return nil, fmt.Errorf("not a JSON object: got a JSON %s", typeErr.Value)
		}
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	boolField := func(key string, def bool) (bool, error) {
		v, ok := fields[key]
		if !ok {
			return def, nil
		}
		var b bool
		if err := json.Unmarshal(v, &b); err != nil {
			return false, fmt.Errorf("%q: want true or false", key)
		}
		return b, nil
	}
	allowOnly := func(keys ...string) error {
		for k := range fields {
			known := false
			for _, want := range keys {
				known = known || k == want
			}
			if !known {
				return fmt.Errorf("unexpected field %q next to %q (allowed: %v)", k, keys[0], keys)
			}
		}
		return nil
	}
	_, hasText := fields["text"]
	_, hasMessages := fields["messages"]
	_, hasIDs := fields["ids"]
	switch {
	case hasText && !hasMessages && !hasIDs:
		if err := allowOnly("text", "add_special_tokens"); err != nil {
			return nil, err
		}
		var text string
		if err := json.Unmarshal(fields["text"], &text); err != nil {
			return nil, errors.New(`"text": want a string`)
		}
		special, err := boolField("add_special_tokens", true)
		if err != nil {
			return nil, err
		}
		return struct {
			IDs []int `json:"ids"`
		}{nonNil(tok.Encode(text, special))}, nil
	case hasMessages && !hasText && !hasIDs:
		if err := allowOnly("messages", "add_generation_prompt"); err != nil {
			return nil, err
		}
		genPrompt, err := boolField("add_generation_prompt", false)
		if err != nil {
			return nil, err
		}
		text, err := tok.ApplyChatTemplate(fields["messages"], genPrompt)
		if err != nil {
			return nil, err
		}
		return struct {
			Text string `json:"text"`
			IDs  []int  `json:"ids"`
		}{text, nonNil(tok.Encode(text, false))}, nil
	case hasIDs && !hasText && !hasMessages:
		if err := allowOnly("ids", "skip_special_tokens"); err != nil {
			return nil, err
		}
		var ids []int
		if err := json.Unmarshal(fields["ids"], &ids); err != nil {
			return nil, errors.New(`"ids": want an array of integers`)
		}
		for i, id := range ids {
			if id < 0 || id >= tok.VocabSize() {
				return nil, fmt.Errorf(`"ids"[%d] = %d: out of range [0, %d)`, i, id, tok.VocabSize())
			}
		}
		skip, err := boolField("skip_special_tokens", false)
		if err != nil {
			return nil, err
		}
		return struct {
			Text string `json:"text"`
		}{tok.Decode(ids, skip)}, nil
	}
	return nil, errors.New(`want exactly one of "text", "messages" or "ids"`)
}

func nonNil(ids []int) []int {
	if ids == nil {
		return []int{}
	}
	return ids
}
