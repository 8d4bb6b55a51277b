// Package synth owns the built-in data of SPEC section 10: generated tasks whose answers are
// checked exactly, with a long context and a short answer (SparseLoRA's regime: most tokens
// are context), and a pretraining corpus of the same world in other phrasings for the
// project's own tiny base model, so that fine-tuning on a task has something to add.
//
// Every output is a pure function of its arguments (task, options, count, seed, split), made
// with the package's own SplitMix64 generator so that a seed names the same data under every Go
// release. Whether a problem belongs to the train or the eval split is decided by a hash of the
// problem's defining parameters, never by the seed or the draw order, so no seed or count can put
// one problem into both splits.
package synth

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"strings"
)

// Example is one prompt/completion line of a task (data's prompt_completion format with the
// optional exact-match answer).
type Example struct {
	Prompt     string `json:"prompt"`
	Completion string `json:"completion"`
	Answer     string `json:"answer"`
}

// Split names a disjoint part of a task's problem space.
type Split int

const (
	Train Split = iota
	Eval
)

// evalModulus: a problem whose hash is 0 modulo evalModulus is an eval problem (10 %).
const evalModulus = 10

func (s Split) String() string {
	if s == Eval {
		return "eval"
	}
	return "train"
}

// ParseSplit reads "train" or "eval".
func ParseSplit(s string) (Split, error) {
	switch s {
	case "train":
		return Train, nil
	case "eval":
		return Eval, nil
	}
	return Train, fmt.Errorf("split %q: want train or eval", s)
}

// SplitOf is the split a problem of task with the canonical parameter string key belongs to.
func SplitOf(task, key string) Split {
	h := fnv.New64a()
	h.Write([]byte(task))
	h.Write([]byte{0})
	h.Write([]byte(key))
	if h.Sum64()%evalModulus == 0 {
		return Eval
	}
	return Train
}

// Options sets a task's difficulty. Zero Steps and Records take DefaultOptions' values; zero
// Distractors means none (start from DefaultOptions for the built-in difficulty).
type Options struct {
	// Steps (arith): operations applied to the asked-about quantity, 1..MaxSteps.
	Steps int
	// Distractors (arith): events about other people, 0..MaxDistractors.
	Distractors int
	// Records (lookup): key: value records in the context, 2..len(names).
	Records int
	// AnswerOnly (arith): the completion is just the number, without the worked steps.
	AnswerOnly bool
}

// Difficulty bounds.
const (
	MaxSteps       = 8
	MaxDistractors = 12
)

// DefaultOptions is the difficulty of the built-in task.
func DefaultOptions() Options { return Options{Steps: 2, Distractors: 2, Records: 10} }

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.Steps == 0 {
		o.Steps = d.Steps
	}
	if o.Records == 0 {
		o.Records = d.Records
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Steps < 1 || o.Steps > MaxSteps:
		return fmt.Errorf("steps %d: want 1..%d", o.Steps, MaxSteps)
	case o.Distractors < 0 || o.Distractors > MaxDistractors:
		return fmt.Errorf("distractors %d: want 0..%d", o.Distractors, MaxDistractors)
	case o.Records < 2 || o.Records > len(names):
		return fmt.Errorf("records %d: want 2..%d", o.Records, len(names))
	}
	return nil
}

// problem is one generated example with key, the canonical string of the parameters that
// define it: the split hash and the de-duplication use it.
type problem struct {
	key string
	ex  Example
}

type task struct {
	name, about string
	generate    func(r *rng, o Options) problem
}

func tasks() []task {
	return []task{
		{"arith", "multi-step arithmetic word problems with distractor sentences; worked steps, then \"The answer is N.\"", generateArith},
		{"lookup", "retrieve the value of one key from a list of key: value records", generateLookup},
	}
}

// Tasks lists the task names with a one-line description each.
func Tasks() [][2]string {
	var out [][2]string
	for _, t := range tasks() {
		out = append(out, [2]string{t.name, t.about})
	}
	return out
}

func findTask(name string) (task, error) {
	var known []string
	for _, t := range tasks() {
		if t.name == name {
			return t, nil
		}
		known = append(known, t.name)
	}
	return task{}, fmt.Errorf("unknown task %q (have %s)", name, strings.Join(known, ", "))
}

// Generate makes n distinct problems of the named task that belong to split, drawn with seed.
// It fails when the task's problem space at these options cannot supply n distinct problems.
func Generate(ctx context.Context, name string, opts Options, n int, seed uint64, split Split) ([]Example, error) {
	t, err := findTask(name)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("task %s: %w", name, err)
	}
	if n < 0 {
		return nil, fmt.Errorf("task %s: count %d is negative", name, n)
	}
	r := newRNG(seed)
	// Capacity grows with the results: a huge n must not allocate up front
	// (and fail on memory before the first draw or a cancellation).
	seen := make(map[string]bool, min(n, preallocLimit))
	out := make([]Example, 0, min(n, preallocLimit))
	maxDraws := 50*n + 10000
	for draw := 0; len(out) < n; draw++ {
		if draw == maxDraws {
			return nil, fmt.Errorf("task %s: only %d distinct %s problems in %d draws (ask for fewer or raise the difficulty)", name, len(out), split, maxDraws)
		}
		if draw%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		p := t.generate(r, opts)
		if seen[p.key] || SplitOf(name, p.key) != split {
			continue
		}
		seen[p.key] = true
		out = append(out, p.ex)
	}
	return out, nil
}

// preallocLimit caps the capacity reserved for n results before any exist.
const preallocLimit = 1 << 16

// WriteJSONL writes one JSON object per line, with HTML characters unescaped (as Python's json).
func WriteJSONL[T any](w io.Writer, items []T) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i := range items {
		if err := enc.Encode(items[i]); err != nil {
			return fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return bw.Flush()
}
