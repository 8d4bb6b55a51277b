package synth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// worldState is an independent reader of the arithmetic world's sentences: it re-derives every
// count from the text, so it checks the generators' answers without sharing their logic.
type worldState struct {
	counts map[string]int // "name|noun" (noun singular) -> count
	// changes of each quantity in order, for the worked steps
	history map[string][]int
}

var (
	sentencePattern = regexp.MustCompile(`[^.?]+[.?]`)
	hasPattern      = regexp.MustCompile(`^(\w+) has (\d+) (\w+)\.$`)
	gainPattern     = regexp.MustCompile(`^(\w+) (?:buys|finds|picks up|gets) (\d+) more (\w+)(?: from \w+)?\.$`)
	lossPattern     = regexp.MustCompile(`^(\w+) (?:gives|loses|sells) (\d+) (\w+)(?: to \w+)?\.$`)
	questionPattern = regexp.MustCompile(`^How many (\w+) does (\w+) have now\?$`)
	nowPattern      = regexp.MustCompile(`^Now (\w+) has (\d+) (\w+)\.$`)
	sincePattern    = regexp.MustCompile(`^Since (\d+) ([+-]) (\d+) = (\d+), (\w+) now has (\d+) (\w+)\.$`)
	endPattern      = regexp.MustCompile(`^In the end, (.*)\.$`)
	endPartPattern  = regexp.MustCompile(`^(\w+) has (\d+) (\w+)$`)
	lastNumber      = regexp.MustCompile(`\d+`)
)

func quantity(name, noun string) string { return name + "|" + strings.TrimSuffix(noun, "s") }

func atoi(t *testing.T, s string) int {
	t.Helper()
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("number %q: %v", s, err)
	}
	return v
}

// read applies one sentence; it returns the asked quantity for a question, and fails the test
// on a sentence it does not know or a stated count that disagrees with the events.
func (w *worldState) read(t *testing.T, sentence string) (asked string) {
	t.Helper()
	checkCount := func(name, n, noun string) {
		if got := w.counts[quantity(name, noun)]; got != atoi(t, n) {
			t.Errorf("%q: the events give %s %d %s", sentence, name, got, noun)
		}
	}
	if m := hasPattern.FindStringSubmatch(sentence); m != nil {
		q := quantity(m[1], m[3])
		if _, dup := w.counts[q]; dup {
			t.Errorf("%q: %s introduced twice", sentence, q)
		}
		w.counts[q] = atoi(t, m[2])
		return ""
	}
	if m := gainPattern.FindStringSubmatch(sentence); m != nil {
		w.apply(t, sentence, quantity(m[1], m[3]), atoi(t, m[2]))
		return ""
	}
	if m := lossPattern.FindStringSubmatch(sentence); m != nil {
		w.apply(t, sentence, quantity(m[1], m[3]), -atoi(t, m[2]))
		return ""
	}
	if m := questionPattern.FindStringSubmatch(sentence); m != nil {
		return quantity(m[2], m[1])
	}
	if m := nowPattern.FindStringSubmatch(sentence); m != nil {
		checkCount(m[1], m[2], m[3])
		return ""
	}
	if m := sincePattern.FindStringSubmatch(sentence); m != nil {
		a, b, c := atoi(t, m[1]), atoi(t, m[3]), atoi(t, m[4])
		if m[2] == "-" {
			b = -b
		}
		if a+b != c {
			t.Errorf("%q: wrong arithmetic", sentence)
		}
		checkCount(m[5], m[6], m[7])
		checkCount(m[5], m[4], m[7])
		return ""
	}
	if m := endPattern.FindStringSubmatch(sentence); m != nil {
		for _, part := range strings.Split(m[1], " and ") {
			p := endPartPattern.FindStringSubmatch(part)
			if p == nil {
				t.Fatalf("%q: unknown part %q", sentence, part)
			}
			checkCount(p[1], p[2], p[3])
		}
		return ""
	}
	t.Fatalf("unknown sentence %q", sentence)
	return ""
}

func (w *worldState) apply(t *testing.T, sentence, q string, delta int) {
	t.Helper()
	n, ok := w.counts[q]
	if !ok {
		t.Fatalf("%q: %s was never introduced", sentence, q)
	}
	w.history[q] = append(w.history[q], n)
	n += delta
	if n < 1 || n > 40 || delta == 0 || delta > 9 || delta < -9 {
		t.Errorf("%q: count %d or change %d out of the world's range", sentence, n, delta)
	}
	w.counts[q] = n
}

func readWorld(t *testing.T, text string) (*worldState, string) {
	t.Helper()
	w := &worldState{counts: map[string]int{}, history: map[string][]int{}}
	asked := ""
	for _, s := range sentencePattern.FindAllString(text, -1) {
		if q := w.read(t, strings.TrimSpace(s)); q != "" {
			asked = q
		}
	}
	return w, asked
}

func TestArithAnswersFollowFromTheText(t *testing.T) {
	for _, opts := range []Options{DefaultOptions(), {Steps: 1}, {Steps: 4, Distractors: 6}, {Steps: 3, Distractors: 1, AnswerOnly: true}} {
		exs, err := Generate(context.Background(), "arith", opts, 300, 7, Train)
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range exs {
			body, ok := strings.CutSuffix(ex.Prompt, "\nAnswer:")
			if !ok {
				t.Fatalf("prompt %q does not end in the answer cue", ex.Prompt)
			}
			w, asked := readWorld(t, body)
			if asked == "" {
				t.Fatalf("prompt %q asks nothing", ex.Prompt)
			}
			if got := len(w.history[asked]); got != opts.withDefaults().Steps {
				t.Errorf("prompt %q: %d changes of the asked count, want %d", ex.Prompt, got, opts.withDefaults().Steps)
			}
			events := 0
			for _, h := range w.history {
				events += len(h)
			}
			if want := opts.withDefaults().Steps + opts.Distractors; events != want {
				t.Errorf("prompt %q: %d events, want %d", ex.Prompt, events, want)
			}
			if want := strconv.Itoa(w.counts[asked]); ex.Answer != want {
				t.Errorf("prompt %q: answer %q, the text gives %s", ex.Prompt, ex.Answer, want)
			}
			nums := lastNumber.FindAllString(ex.Completion, -1)
			if len(nums) == 0 || nums[len(nums)-1] != ex.Answer {
				t.Errorf("completion %q: its last number is not the answer %q", ex.Completion, ex.Answer)
			}
			if opts.AnswerOnly {
				if ex.Completion != " "+ex.Answer {
					t.Errorf("answer-only completion %q", ex.Completion)
				}
				continue
			}
			// The worked steps restate the asked quantity's history.
			var steps []string
			values := append(w.history[asked], w.counts[asked])
			for i := 1; i < len(values); i++ {
				d := values[i] - values[i-1]
				op := "+"
				if d < 0 {
					op, d = "-", -d
				}
				steps = append(steps, fmt.Sprintf("%d %s %d = %d.", values[i-1], op, d, values[i]))
			}
			if want := " " + strings.Join(steps, " ") + " The answer is " + ex.Answer + "."; ex.Completion != want {
				t.Errorf("completion %q, want %q", ex.Completion, want)
			}
		}
	}
}

var recordPattern = regexp.MustCompile(`^- (\w+): (\d+)$`)

func TestLookupAnswersFollowFromTheText(t *testing.T) {
	for _, records := range []int{2, 10, 24} {
		exs, err := Generate(context.Background(), "lookup", Options{Records: records}, 200, 3, Eval)
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range exs {
			lines := strings.Split(ex.Prompt, "\n")
			if len(lines) != records+2 || lines[len(lines)-1] != "Answer:" {
				t.Fatalf("prompt %q: want %d records, a question and the answer cue", ex.Prompt, records)
			}
			values := map[string]string{}
			for _, line := range lines[:records] {
				m := recordPattern.FindStringSubmatch(line)
				if m == nil {
					t.Fatalf("record %q", line)
				}
				if _, dup := values[m[1]]; dup {
					t.Errorf("prompt %q: key %s twice", ex.Prompt, m[1])
				}
				values[m[1]] = m[2]
			}
			key, ok := strings.CutPrefix(lines[records], "What is the value of ")
			key, ok2 := strings.CutSuffix(key, "?")
			if !ok || !ok2 || values[key] == "" {
				t.Fatalf("question %q", lines[records])
			}
			if ex.Answer != values[key] || ex.Completion != " "+values[key] {
				t.Errorf("prompt %q: answer %q completion %q, the list gives %s", ex.Prompt, ex.Answer, ex.Completion, values[key])
			}
		}
	}
}

// arithCore is what defines an arith problem, read back from its text.
func arithCore(t *testing.T, prompt string) string {
	w, asked := readWorld(t, strings.TrimSuffix(prompt, "\nAnswer:"))
	return fmt.Sprint(asked, w.history[asked], w.counts[asked])
}

func TestSplitsAreDisjoint(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"arith", "lookup"} {
		opts := DefaultOptions()
		if name == "arith" {
			opts = Options{Steps: 1} // the smallest problem space, where collisions are likeliest
		}
		train := map[string]bool{}
		for seed := uint64(1); seed <= 3; seed++ {
			exs, err := Generate(ctx, name, opts, 1500, seed, Train)
			if err != nil {
				t.Fatal(err)
			}
			for _, ex := range exs {
				train[ex.Prompt] = true
				if name == "arith" {
					train[arithCore(t, ex.Prompt)] = true
				}
			}
		}
		for seed := uint64(1); seed <= 3; seed++ {
			exs, err := Generate(ctx, name, opts, 300, seed, Eval)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, ex := range exs {
				if train[ex.Prompt] {
					t.Errorf("%s seed %d: eval prompt also in train: %q", name, seed, ex.Prompt)
				}
				if seen[ex.Prompt] {
					t.Errorf("%s seed %d: eval prompt twice: %q", name, seed, ex.Prompt)
				}
				seen[ex.Prompt] = true
				if name == "arith" && train[arithCore(t, ex.Prompt)] {
					t.Errorf("%s seed %d: eval problem %q has the same question and numbers as a train problem", name, seed, ex.Prompt)
				}
			}
		}
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"arith", "lookup"} {
		a, err := Generate(ctx, name, DefaultOptions(), 50, 11, Train)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := Generate(ctx, name, DefaultOptions(), 50, 11, Train)
		c, _ := Generate(ctx, name, DefaultOptions(), 50, 12, Train)
		var ja, jb, jc bytes.Buffer
		for _, x := range []struct {
			buf *bytes.Buffer
			exs []Example
		}{{&ja, a}, {&jb, b}, {&jc, c}} {
			if err := WriteJSONL(x.buf, x.exs); err != nil {
				t.Fatal(err)
			}
		}
		if ja.String() != jb.String() {
			t.Errorf("%s: the same seed gave different data", name)
		}
		if ja.String() == jc.String() {
			t.Errorf("%s: different seeds gave the same data", name)
		}
		if lines := strings.Count(ja.String(), "\n"); lines != 50 {
			t.Errorf("%s: %d JSONL lines, want 50", name, lines)
		}
	}
}

// The built-in difficulty keeps SparseLoRA's regime: a prompt of a few hundred characters, an
// answer of a few.
func TestDefaultSizes(t *testing.T) {
	for _, name := range []string{"arith", "lookup"} {
		exs, err := Generate(context.Background(), name, DefaultOptions(), 200, 5, Train)
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range exs {
			if len(ex.Prompt) < 90 || len(ex.Prompt) > 300 || len(ex.Answer) > 3 || len(ex.Completion) > 60 {
				t.Errorf("%s: prompt %d chars, completion %q, answer %q", name, len(ex.Prompt), ex.Completion, ex.Answer)
			}
		}
	}
}

func TestJSONLLinesAreDataFormat(t *testing.T) {
	exs, err := Generate(context.Background(), "arith", DefaultOptions(), 3, 1, Eval)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteJSONL(&buf, exs); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"prompt", "completion", "answer"} {
			if s, ok := obj[field].(string); !ok || s == "" {
				t.Errorf("line %s: field %s missing", line, field)
			}
		}
	}
}

func TestOptionsAndNamesAreChecked(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		opts Options
		n    int
	}{
		{"nope", DefaultOptions(), 1},
		{"arith", Options{Steps: MaxSteps + 1}, 1},
		{"arith", Options{Distractors: -1}, 1},
		{"lookup", Options{Records: len(names) + 1}, 1},
		{"lookup", Options{Records: 1}, 1},
		{"lookup", DefaultOptions(), -1},
	} {
		if _, err := Generate(ctx, c.name, c.opts, c.n, 1, Train); err == nil {
			t.Errorf("%s %+v n=%d: no error", c.name, c.opts, c.n)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Generate(cancelled, "arith", DefaultOptions(), 10, 1, Train); err == nil {
		t.Error("a cancelled context did not stop Generate")
	}
	if _, err := ParseSplit("test"); err == nil {
		t.Error(`ParseSplit("test") accepted`)
	}
}

var equationPattern = regexp.MustCompile(`(\d+) (\+|-|plus|minus) (\d+) (?:=|is) (\d+)`)

func TestCorpus(t *testing.T) {
	docs, err := Corpus(context.Background(), 600, 9)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Corpus(context.Background(), 600, 9)
	kinds := map[string]int{}
	for i, d := range docs {
		if d != again[i] {
			t.Fatalf("document %d differs between runs with the same seed", i)
		}
		if len(d.Text) < 20 || len(d.Text) > 600 {
			t.Errorf("document %d has %d characters: %q", i, len(d.Text), d.Text)
		}
		for _, taskPhrase := range []string{"Answer:", "The answer is", "What is the value", "How many"} {
			if strings.Contains(d.Text, taskPhrase) {
				t.Errorf("document %q uses the task format (%q)", d.Text, taskPhrase)
			}
		}
		// Every equation is true.
		for _, m := range equationPattern.FindAllStringSubmatch(d.Text, -1) {
			a, b, c := atoi(t, m[1]), atoi(t, m[3]), atoi(t, m[4])
			if m[2] == "-" || m[2] == "minus" {
				b = -b
			}
			if a+b != c {
				t.Errorf("false equation %q in %q", m[0], d.Text)
			}
		}
		switch {
		case strings.Contains(d.Text, "In the end"):
			kinds["story"]++
			readWorld(t, d.Text) // restated counts agree with the events
		case equationPattern.MatchString(d.Text):
			kinds["equations"]++
		case strings.Contains(d.Text, "\n") || strings.Contains(d.Text, "number is") || strings.Contains(d.Text, "it is"):
			kinds["list"]++
			checkRecalls(t, d.Text)
		default:
			kinds["world"]++
		}
	}
	for _, k := range []string{"story", "equations", "list", "world"} {
		if kinds[k] < 40 {
			t.Errorf("only %d %s documents in 600: %v", kinds[k], k, kinds)
		}
	}
}

var (
	listEntryPattern = regexp.MustCompile(`(\w+)(?: = |: | )(\d+)`) // "Ava 42", "- Ava = 42", "Ava: 42"
	recallPatterns   = []*regexp.Regexp{
		regexp.MustCompile(`(\w+)'s number is (\d+)\.`),
		regexp.MustCompile(`The number for (\w+) is (\d+)\.`),
		regexp.MustCompile(`(\w+) has (\d+)\.`),
		regexp.MustCompile(`For (\w+) it is (\d+)\.`),
	}
)

// checkRecalls: every recalled number is the one the list gave.
func checkRecalls(t *testing.T, text string) {
	t.Helper()
	list, recall, ok := strings.Cut(text[strings.IndexAny(text, ":\n")+1:], "\n")
	if strings.Count(text, "\n") > 1 { // one record a line: the recall is the last line
		cut := strings.LastIndex(text, "\n")
		list, recall, ok = text[:cut], text[cut+1:], true
	}
	if !ok {
		t.Fatalf("list document %q has no recall line", text)
	}
	values := map[string]string{}
	for _, m := range listEntryPattern.FindAllStringSubmatch(list, -1) {
		values[m[1]] = m[2]
	}
	found := 0
	for _, p := range recallPatterns {
		for _, m := range p.FindAllStringSubmatch(recall, -1) {
			found++
			if values[m[1]] != m[2] {
				t.Errorf("%q: recalls %s as %s, the list has %q", text, m[1], m[2], values[m[1]])
			}
		}
	}
	if found == 0 {
		t.Errorf("%q: no recall", text)
	}
}

// A huge count must not reserve memory for every result before the first one
// exists: with a cancelled context Generate and Corpus return at once.
func TestHugeCountsDoNotAllocateUpFront(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	const huge = 1 << 40
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := Generate(cancelled, "lookup", DefaultOptions(), huge, 1, Train); err == nil {
		t.Error("Generate: a cancelled context did not stop it")
	}
	if _, err := Corpus(cancelled, huge, 1); err == nil {
		t.Error("Corpus: a cancelled context did not stop it")
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("asking for %d results allocated %d MiB up front", huge, grew>>20)
	}
}
