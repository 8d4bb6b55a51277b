// Package data owns the training and evaluation data: it reads JSONL files in
// the formats of SPEC section 8 (text, prompt+completion, chat messages,
// Alpaca, pre-tokenized), turns each line into token ids and Hugging Face
// style labels (-100 where a token is not scored), and cuts the examples into
// right-padded micro-batches in the Hugging Face Trainer's order with a cursor
// a checkpoint can store.
//
// The package knows tokenizers only through the small Tokenizer interface, so
// it stays host-only and testable without tokenizer files.
package data

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// IgnoreIndex marks a label that does not enter the loss (PyTorch's
// CrossEntropyLoss ignore_index, used by Hugging Face).
const IgnoreIndex = -100

// DefaultMaxLineBytes bounds one JSONL line, so a file without newlines cannot
// make the loader buffer it whole.
const DefaultMaxLineBytes = 64 << 20

// Format names, as reported in Dataset.Format.
const (
	FormatText             = "text"
	FormatPromptCompletion = "prompt_completion"
	FormatMessages         = "messages"
	FormatAlpaca           = "alpaca"
	FormatTokenized        = "input_ids"
)

// Tokenizer is what the loader needs from a tokenizer; *tokenizer.Tokenizer
// satisfies it. Load calls it from several goroutines at once.
type Tokenizer interface {
	// Encode returns the token ids of text, with the tokenizer's special
	// tokens (e.g. BOS) added when addSpecialTokens is true.
	Encode(text string, addSpecialTokens bool) []int
	// EOS is the end-of-sequence id, false when the tokenizer has none.
	EOS() (int, bool)
	HasChatTemplate() bool
	// ApplyChatTemplate renders a JSON array of messages to text.
	ApplyChatTemplate(messages json.RawMessage, addGenerationPrompt bool) (string, error)
}

// Example is one tokenized line.
type Example struct {
	IDs []int32
	// Labels[t] is IDs[t] where the token is scored and IgnoreIndex where it is
	// not (Hugging Face convention: the model shifts, logits at t predict
	// Labels[t+1]).
	Labels []int32
	// Prompt is the prompt text for formats that have one (prompt, Alpaca
	// template, chat render up to the last assistant turn with the generation
	// prompt), for generation-based evaluation.
	Prompt string
	// PromptLen is the number of leading IDs that encode Prompt (0 when the
	// format has no prompt): IDs[:PromptLen] is what generation starts from,
	// with special tokens exactly as in training.
	PromptLen int
	// Answer is the reference for exact-match evaluation: the line's "answer"
	// field, else its completion / output / last assistant content.
	Answer string
	// Line is the 1-based line number in the file.
	Line int
}

// Targets is the number of loss targets of the example: positions t >= 1
// whose label is not IgnoreIndex (label 0 is never predicted).
func (e *Example) Targets() int {
	n := 0
	for t := 1; t < len(e.Labels); t++ {
		if e.Labels[t] != IgnoreIndex {
			n++
		}
	}
	return n
}

// Options control Load.
type Options struct {
	// MaxSeqLen truncates examples from the right to this many tokens
	// (0: no limit).
	MaxSeqLen int
	// SkipBadLines counts unusable lines in Dataset.Skipped instead of failing.
	SkipBadLines bool
	// VocabSize, when > 0, bounds pre-tokenized ids and labels.
	VocabSize int
	// MaxLineBytes bounds one line (0: DefaultMaxLineBytes).
	MaxLineBytes int
	// Workers is how many lines are tokenized at once (0: GOMAXPROCS).
	Workers int
}

// maxSkipErrors is how many skipped-line errors a Dataset keeps for reports.
const maxSkipErrors = 10

// Dataset is a loaded file.
type Dataset struct {
	Path     string
	Format   string
	Examples []Example
	// Truncated counts kept examples that MaxSeqLen shortened.
	Truncated int
	// Skipped counts lines dropped under SkipBadLines; SkipErrors holds the
	// first few reasons.
	Skipped    int
	SkipErrors []error
	// Tokens is the total number of ids, ScoredTokens the total number of loss
	// targets (Example.Targets), MaxLen the longest example.
	Tokens, ScoredTokens, MaxLen int
	// Bytes and SHA256 identify the content read (hashed while reading), so
	// a resumed run can tell an edited file from the one it trained on.
	Bytes  int64
	SHA256 string
}

// LineError is an error in one line of a data file.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Load reads and tokenizes a JSONL file, one example a line. The first valid
// line's keys fix the file's format; a line of another format is an error:
//   - {"text"}: every token scored, tokenizer special tokens added;
//   - {"prompt", "completion"}: Encode(prompt, with special tokens) ++
//     Encode(completion) ++ EOS (as TRL), only the completion and EOS scored;
//   - {"messages": [{"role", "content"}, ...]}: the chat template's render,
//     only assistant turns scored. Turn i starts after the tokens of
//     render(messages[:i], add_generation_prompt), which must be a token
//     prefix of the whole render, and ends where render(messages[:i+1]) stops
//     agreeing with it or just after its first end-of-turn token (EOS,
//     <|eot_id|>, <|im_end|>, ...), whichever comes first;
//   - {"instruction", "input"?, "output", "answer"?} (Alpaca, the
//     math/commonsense sets): AlpacaPrompt as prompt, output as completion;
//   - {"input_ids", "labels"?}: as given; without labels every token scored.
//
// An optional "answer" (string or number) becomes Example.Answer. Lines that
// are malformed, empty, of the wrong types, or left without a loss target
// after truncation are errors naming FILE:LINE, or are counted and skipped
// with SkipBadLines. tok may be nil for pre-tokenized files.
func Load(path string, tok Tokenizer, opts Options) (*Dataset, error) {
	return LoadContext(context.Background(), path, tok, opts)
}

// LoadContext is Load with cancellation.
func LoadContext(ctx context.Context, path string, tok Tokenizer, opts Options) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	return LoadReader(ctx, f, path, tok, opts)
}

// LoadReader reads JSONL from r; name is used in messages and Dataset.Path.
// Lines are tokenized by opts.Workers goroutines at once, so tok must be safe
// for concurrent use.
func LoadReader(ctx context.Context, r io.Reader, name string, tok Tokenizer, opts Options) (*Dataset, error) {
	if opts.MaxSeqLen < 0 || opts.VocabSize < 0 || opts.MaxLineBytes < 0 || opts.Workers < 0 {
		return nil, fmt.Errorf("data: %s: negative option (max seq len %d, vocab size %d, max line bytes %d, workers %d)",
			name, opts.MaxSeqLen, opts.VocabSize, opts.MaxLineBytes, opts.Workers)
	}
	maxLine := opts.MaxLineBytes
	if maxLine == 0 {
		maxLine = DefaultMaxLineBytes
	}
	workers := opts.Workers
	if workers == 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	ds := &Dataset{Path: name}
	p := &parser{name: name, tok: tok, opts: opts}
	content := &hashingReader{r: r, h: sha256.New()}
	lines := newLineReader(content, maxLine)
	chunk := make([]lineResult, 0, chunkLines)
	for lineNo, eof := 0, false; !eof; lineNo += len(chunk) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("data: %s: %w", name, err)
		}
		chunk = chunk[:0]
		for len(chunk) < chunkLines {
			line, err := lines.next()
			if err == io.EOF {
				eof = true
				break
			}
			if err != nil && !errors.Is(err, errLineTooLong) {
				return nil, fmt.Errorf("data: %s:%d: %w", name, lineNo+len(chunk)+1, err)
			}
			if err == nil && !utf8.Valid(line) {
				// encoding/json would turn the bytes into U+FFFD silently.
				err = invalidUTF8(line)
			}
			chunk = append(chunk, lineResult{line: bytes.Clone(line), err: err})
		}
		p.parseChunk(chunk, lineNo+1, workers)
		for i := range chunk {
			res := &chunk[i]
			lineErr := res.err
			if lineErr == nil {
				res.ex.Line = lineNo + 1 + i
				lineErr = ds.add(res.ex, opts.MaxSeqLen)
			}
			if lineErr == nil {
				continue
			}
			var fatal *fatalError
			if errors.As(lineErr, &fatal) {
				return nil, fmt.Errorf("data: %s: %w", name, fatal.err)
			}
			le := &LineError{File: name, Line: lineNo + 1 + i, Err: lineErr}
			if !opts.SkipBadLines {
				return nil, fmt.Errorf("data: %w", le)
			}
			ds.Skipped++
			if len(ds.SkipErrors) < maxSkipErrors {
				ds.SkipErrors = append(ds.SkipErrors, le)
			}
		}
	}
	ds.Format = p.format
	ds.Bytes, ds.SHA256 = content.n, hex.EncodeToString(content.h.Sum(nil))
	if len(ds.Examples) == 0 {
		if ds.Skipped > 0 {
			return nil, fmt.Errorf("data: %s: no usable examples (%d lines skipped; first: %v)", name, ds.Skipped, ds.SkipErrors[0])
		}
		return nil, fmt.Errorf("data: %s: no examples (empty file)", name)
	}
	return ds, nil
}

// chunkLines is how many lines are read before they are tokenized in
// parallel.
const chunkLines = 1024

// lineResult is one line of a chunk: its bytes (or a read error) in, the
// example or the line's error out.
type lineResult struct {
	line []byte
	ex   *Example
	err  error
}

// parseChunk parses lines sequentially until the format is known (the first
// valid line fixes it), then the rest on several goroutines, which only read
// the parser.
func (p *parser) parseChunk(chunk []lineResult, firstLine, workers int) {
	i := 0
	for ; i < len(chunk) && p.format == ""; i++ {
		if chunk[i].err == nil {
			chunk[i].ex, chunk[i].err = p.safeParseLine(chunk[i].line, firstLine+i)
		}
	}
	if p.format == FormatMessages {
		p.endOfTurnIDs() // look up once, before the goroutines read it
	}
	rest, offset := chunk[i:], firstLine+i
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, len(rest)) {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= len(rest) {
					return
				}
				if rest[k].err == nil {
					rest[k].ex, rest[k].err = p.safeParseLine(rest[k].line, offset+k)
				}
			}
		})
	}
	wg.Wait()
}

// safeParseLine turns a panic in the tokenizer into the line's error.
func (p *parser) safeParseLine(line []byte, lineNo int) (ex *Example, err error) {
	defer func() {
		if r := recover(); r != nil {
			ex, err = nil, fmt.Errorf("internal error while tokenizing: %v", r)
		}
	}()
	return p.parseLine(line, lineNo)
}

// add truncates ex, checks it still has a loss target and appends it.
func (ds *Dataset) add(ex *Example, maxSeqLen int) error {
	truncated := false
	if maxSeqLen > 0 && len(ex.IDs) > maxSeqLen {
		ex.IDs, ex.Labels = ex.IDs[:maxSeqLen:maxSeqLen], ex.Labels[:maxSeqLen:maxSeqLen]
		ex.PromptLen = min(ex.PromptLen, maxSeqLen)
		truncated = true
	}
	targets := ex.Targets()
	if targets == 0 {
		if truncated {
			return fmt.Errorf("no scored token left after truncation to %d tokens", maxSeqLen)
		}
		return errors.New("no scored token (nothing to learn from this line)")
	}
	if truncated {
		ds.Truncated++
	}
	ds.Tokens += len(ex.IDs)
	ds.ScoredTokens += targets
	ds.MaxLen = max(ds.MaxLen, len(ex.IDs))
	ds.Examples = append(ds.Examples, *ex)
	return nil
}

// fatalError is a problem with the setup (e.g. the tokenizer), not with a
// line: SkipBadLines does not skip it.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

var errLineTooLong = errors.New("line too long")

// invalidUTF8 names where a line stops being UTF-8.
func invalidUTF8(line []byte) error {
	at := 0
	for at < len(line) {
		r, size := utf8.DecodeRune(line[at:])
		if r == utf8.RuneError && size <= 1 {
			break
		}
		at += size
	}
	return fmt.Errorf("invalid UTF-8 at byte %d of the line (0x%02x); the file must be UTF-8 text", at+1, line[at])
}

// hashingReader hashes and counts what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	hr.n += int64(n)
	return n, err
}

// lineReader splits input into lines without holding more than max bytes of
// one line; an over-long line is consumed and reported, so the next line can
// still be read (SkipBadLines).
type lineReader struct {
	r     *bufio.Reader
	max   int
	buf   []byte
	first bool
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max, first: true}
}

func (lr *lineReader) next() ([]byte, error) {
	lr.buf = lr.buf[:0]
	first := lr.first
	lr.first = false
	tooLong := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
		if !tooLong {
			if len(lr.buf)+len(chunk) > lr.max+1 { // +1: the newline itself
				tooLong = true
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(lr.buf) == 0 && !tooLong {
				return nil, io.EOF
			}
			break
		}
		if err != nil {
			return nil, err
		}
		break
	}
	if tooLong {
		return nil, fmt.Errorf("%w (over %d bytes)", errLineTooLong, lr.max)
	}
	line := bytes.TrimSuffix(lr.buf, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if first {
		line = bytes.TrimPrefix(line, []byte("\uFEFF")) // UTF-8 byte order mark
	}
	return line, nil
}
