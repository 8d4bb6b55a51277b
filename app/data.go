package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sparselora/sparselora/data/synth"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/tokenizer"
)

// runData makes the built-in data (SPEC section 10): a task, the pretraining corpus, and the
// tokenizer trained on that corpus.
func runData(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func(w io.Writer) {
		fmt.Fprint(w, "usage: sparselora data <synth|corpus|tokenizer> [flags]\n\n"+
			"  synth NAME  generate a task's prompt/completion/answer JSONL (train or eval split)\n"+
			"  corpus      generate the pretraining corpus ({\"text\"} JSONL) of the tasks' world\n"+
			"  tokenizer   train a byte-level BPE tokenizer on JSONL text and write tokenizer.json\n\ntasks:\n")
		for _, t := range synth.Tasks() {
			fmt.Fprintf(w, "  %-8s %s\n", t[0], t[1])
		}
		fmt.Fprintln(w, "\nRun `sparselora data <subcommand> --help` for its flags.")
	}
	if len(args) == 0 {
		usage(stderr)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return flag.ErrHelp
	case "synth":
		return runDataSynth(ctx, args[1:], stdout, stderr)
	case "corpus":
		return runDataCorpus(ctx, args[1:], stdout, stderr)
	case "tokenizer":
		return runDataTokenizer(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "sparselora data: unknown subcommand %q\n\n", args[0])
	usage(stderr)
	return errUsage
}

func runDataSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	def := synth.DefaultOptions()
	fs := newFlags("data synth", "data synth NAME --out FILE.jsonl [flags]\n\n"+
		"Writes N distinct problems of task NAME as {\"prompt\", \"completion\", \"answer\"} lines. Train and\n"+
		"eval problems are disjoint whatever the seeds: a hash of each problem's parameters picks its split.",
		stdout, stderr)
	n := fs.Int("n", 1000, "number of examples")
	seed := fs.Uint64("seed", 1, "random seed")
	out := fs.String("out", "", "output JSONL file (\"-\": stdout)")
	split := fs.String("split", "train", "train or eval")
	steps := fs.Int("steps", def.Steps, fmt.Sprintf("arith: operations on the asked-about count (1..%d)", synth.MaxSteps))
	distractors := fs.Int("distractors", def.Distractors, fmt.Sprintf("arith: events about other people (0..%d)", synth.MaxDistractors))
	records := fs.Int("records", def.Records, "lookup: key: value records in the context")
	answerOnly := fs.Bool("answer-only", false, "arith: the completion is the number alone, without worked steps")
	tokDir := fs.String("tokenizer", "", "also report token counts with this tokenizer directory")
	if err := parseCommand(fs, args, "NAME"); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(fs.Output(), "sparselora data synth: missing --out FILE.jsonl (run with --help)")
		return errUsage
	}
	sp, err := synth.ParseSplit(*split)
	if err != nil {
		return fmt.Errorf("--split: %w", err)
	}
	// synth.Options reads 0 as "the default"; on the command line 0 is a value, and wrong.
	for _, c := range []struct {
		flag      string
		v, lo, hi int
		what      string
	}{
		{"n", *n, 0, maxSynthExamples, "a number of examples"},
		{"steps", *steps, 1, synth.MaxSteps, "a number of steps"},
		{"distractors", *distractors, 0, synth.MaxDistractors, "a number of distractors"},
		{"records", *records, 2, 1 << 20, "a number of records"},
	} {
		if err := checkRange(c.flag, c.v, c.lo, c.hi, c.what); err != nil {
			return err
		}
	}
	// The tokenizer is only for the report, but a wrong directory should fail before any output.
	var tok *tokenizer.Tokenizer
	if *tokDir != "" {
		if tok, err = tokenizer.Load(*tokDir); err != nil {
			return fmt.Errorf("--tokenizer: %w", err)
		}
	}
	opts := synth.Options{Steps: *steps, Distractors: *distractors, Records: *records, AnswerOnly: *answerOnly}
	examples, err := synth.Generate(ctx, fs.Arg(0), opts, *n, *seed, sp)
	if err != nil {
		return err
	}
	if err := writeJSONLFile(*out, stdout, func(w io.Writer) error { return synth.WriteJSONL(w, examples) }); err != nil {
		return err
	}
	if *tokDir == "" {
		if *out != "-" {
			fmt.Fprintf(stdout, "wrote %d %s examples of %s to %s\n", len(examples), sp, fs.Arg(0), *out)
		}
		return nil
	}
	var promptTokens, completionTokens, maxTotal int
	for _, ex := range examples {
		p, c := len(tok.Encode(ex.Prompt, true)), len(tok.Encode(ex.Completion, false))+1 // + EOS
		promptTokens += p
		completionTokens += c
		maxTotal = max(maxTotal, p+c)
	}
	w := stdout
	if *out == "-" {
		w = stderr
	}
	if k := float64(max(len(examples), 1)); len(examples) > 0 {
		fmt.Fprintf(w, "wrote %d %s examples of %s to %s: %.1f prompt + %.1f completion tokens per example (max %d in all)\n",
			len(examples), sp, fs.Arg(0), *out, float64(promptTokens)/k, float64(completionTokens)/k, maxTotal)
	}
	return nil
}

func runDataCorpus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("data corpus", "data corpus --out FILE.jsonl [flags]\n\n"+
		"Writes N pretraining documents ({\"text\"} lines): stories whose counts change, arithmetic facts,\n"+
		"lists of names with numbers that are recalled, sentences about people and things; the tasks'\n"+
		"world in other words than the tasks' question/answer format.",
		stdout, stderr)
	n := fs.Int("n", 20000, "number of documents")
	seed := fs.Uint64("seed", 1, "random seed")
	out := fs.String("out", "", "output JSONL file (\"-\": stdout)")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(fs.Output(), "sparselora data corpus: missing --out FILE.jsonl (run with --help)")
		return errUsage
	}
	if err := checkRange("n", *n, 0, maxSynthExamples, "a number of documents"); err != nil {
		return err
	}
	docs, err := synth.Corpus(ctx, *n, *seed)
	if err != nil {
		return err
	}
	if err := writeJSONLFile(*out, stdout, func(w io.Writer) error { return synth.WriteJSONL(w, docs) }); err != nil {
		return err
	}
	if *out != "-" {
		chars := 0
		for _, d := range docs {
			chars += len(d.Text)
		}
		fmt.Fprintf(stdout, "wrote %d documents (%d bytes of text) to %s\n", len(docs), chars, *out)
	}
	return nil
}

// maxSynthExamples bounds --n: the generated set is held in memory, and a
// mistyped count should fail at once rather than exhaust it.
const maxSynthExamples = 10_000_000

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runDataTokenizer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	def := tokenizer.DefaultTrainOptions()
	fs := newFlags("data tokenizer", "data tokenizer --corpus FILE.jsonl --out DIR [flags]\n\n"+
		"Trains a byte-level BPE (GPT-2 pre-tokenizer; merges by pair count, ties to the smaller ids) on the\n"+
		"\"text\" (or \"prompt\" + \"completion\") of each JSONL line and writes DIR/tokenizer.json and\n"+
		"DIR/tokenizer_config.json with the special tokens "+strings.Join(def.SpecialTokens, " ")+"\n"+
		"(ids 256..), BOS "+def.BOS+", EOS "+def.EOS+" and a chat template.",
		stdout, stderr)
	var corpora stringList
	fs.Var(&corpora, "corpus", "training JSONL file (repeatable)")
	vocab := fs.Int("vocab", def.VocabSize, "vocabulary size: 256 bytes + special tokens + merges")
	out := fs.String("out", "", "output directory")
	maxLen := fs.Int("max-length", def.ModelMaxLength, "model_max_length written to tokenizer_config.json")
	minFreq := fs.Int("min-frequency", def.MinFrequency, "merge only pairs seen at least this often")
	digitsApart := fs.Bool("digits-apart", false, "split every digit into its own token (Qwen2's pre-tokenizer)")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	if len(corpora) == 0 || *out == "" {
		fmt.Fprintln(fs.Output(), "sparselora data tokenizer: want --corpus FILE.jsonl and --out DIR (run with --help)")
		return errUsage
	}
	var texts []string
	for _, path := range corpora {
		t, err := readTrainingTexts(ctx, path)
		if err != nil {
			return err
		}
		texts = append(texts, t...)
	}
	if len(texts) == 0 {
		return fmt.Errorf("--corpus %s: no texts to train on", strings.Join(corpora, ", "))
	}
	opts := def
	opts.VocabSize, opts.ModelMaxLength, opts.MinFrequency, opts.DigitsApart = *vocab, *maxLen, *minFreq, *digitsApart
	trained, err := tokenizer.TrainBPE(ctx, texts, opts)
	if err != nil {
		return err
	}
	if err := trained.WriteDir(*out); err != nil {
		return err
	}
	tok, err := tokenizer.Load(*out)
	if err != nil {
		return fmt.Errorf("the written tokenizer does not load: %w", err)
	}
	var nBytes, nTokens int
	for _, t := range texts {
		nBytes += len(t)
		nTokens += len(tok.Encode(t, false))
	}
	fmt.Fprintf(stdout, "wrote %s: %d ids (%d merges) from %d texts; %.2f bytes per token on them\n",
		filepath.Join(*out, "tokenizer.json"), trained.VocabSize(), len(trained.Merges), len(texts), float64(nBytes)/float64(max(nTokens, 1)))
	return nil
}

// readTrainingTexts reads the "text", or "prompt" + "completion", of every non-blank JSONL line.
func readTrainingTexts(ctx context.Context, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxTokenizeLine)
	var texts []string
	line := 1
	for ; sc.Scan(); line++ {
		if line%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		var obj struct {
			Text       *string `json:"text"`
			Prompt     *string `json:"prompt"`
			Completion *string `json:"completion"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		switch {
		case obj.Text != nil:
			texts = append(texts, *obj.Text)
		case obj.Prompt != nil && obj.Completion != nil:
			texts = append(texts, *obj.Prompt+*obj.Completion)
		default:
			return nil, fmt.Errorf("%s:%d: want a \"text\" or \"prompt\" + \"completion\" line", path, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, scanError(path, line, err, maxTokenizeLine)
	}
	return texts, nil
}

// writeJSONLFile writes through a temporary file renamed into place ("-": stdout), so a failed
// run leaves no half-written data set behind.
func writeJSONLFile(path string, stdout io.Writer, write func(io.Writer) error) error {
	if path == "-" {
		return write(stdout)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("--out %s: is a directory, want a file name", path)
	}
	if dir := filepath.Dir(path); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("--out %s: %w", path, err)
		}
	}
	return atomicfile.Write(path, write)
}
