package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/infer"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/tokenizer"
)

// loadedModel is a model on the GPU with its optional adapter and its
// tokenizer, for the commands that use a trained model.
type loadedModel struct {
	m        *model.Model
	adapters *lora.Set
	tok      *tokenizer.Tokenizer
	close    func()
}

// openModel loads DIR (weights as bf16 with bf16), the PEFT adapter in
// adapterDir when given, and the tokenizer of adapterDir or else DIR.
func openModel(df *deviceFlags, dir, adapterDir string, bf16 bool, quant quantizeFlags, stdout io.Writer) (*loadedModel, error) {
	spec, err := quant.spec()
	if err != nil {
		return nil, err
	}
	if err := checkAdapterDir(adapterDir); err != nil {
		return nil, err
	}
	tokDir := dir
	if adapterDir != "" {
		if _, err := os.Stat(filepath.Join(adapterDir, "tokenizer.json")); err == nil {
			tokDir = adapterDir
		}
	}
	tok, err := tokenizer.Load(tokDir)
	if err != nil {
		return nil, err
	}
	dev, closeDev, err := df.open()
	if err != nil {
		return nil, err
	}
	dtype := gpu.F32
	if bf16 {
		dtype = gpu.BF16
	}
	// The commands that use a trained model only look the embedding table up.
	m, warnings, err := model.LoadWithOptions(dev, dir, model.LoadOptions{DType: dtype, Quantize: spec, HostEmbedding: true})
	if err != nil {
		closeDev()
		return nil, err
	}
	for _, w := range warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	lm := &loadedModel{m: m, tok: tok}
	lm.close = func() { m.Release(); closeDev() }
	if adapterDir != "" {
		if lm.adapters, err = lora.Load(m, adapterDir); err != nil {
			lm.close()
			return nil, err
		}
		lm.adapters.Attach(m)
		lm.close = func() { lm.adapters.Release(); m.Release(); closeDev() }
	}
	fmt.Fprintf(stdout, "adapter: %s (%s); model %s", dev.Info.Name(), dev.Info.Backend, dir)
	if adapterDir != "" {
		fmt.Fprintf(stdout, " + LoRA %s", adapterDir)
	}
	fmt.Fprintln(stdout)
	return lm, nil
}

// checkAdapterDir explains the usual mix-ups of --adapter before loading
// anything: a full checkpoint (train --full, merge) or a missing directory.
// An empty dir (no adapter) passes.
func checkAdapterDir(dir string) error {
	if dir == "" {
		return nil
	}
	st, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Errorf("--adapter: %w", err)
	case !st.IsDir():
		return fmt.Errorf("--adapter %s: is a file; want a PEFT adapter directory (adapter_config.json, adapter_model.safetensors)", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "adapter_config.json")); err == nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return fmt.Errorf("--adapter %s: a full model checkpoint (config.json), not a PEFT adapter: pass it as --model", dir)
	}
	return fmt.Errorf("--adapter %s: no adapter_config.json: not a PEFT adapter directory", dir)
}

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", "generate --model DIR [--adapter DIR] [--prompt TEXT | --data FILE.jsonl] [--chat] [flags]\n\n"+
		"Without --prompt or --data, reads prompts from standard input: a chat session with --chat (or\n"+
		"when the model has a chat template), one completion per line otherwise.", stdout, stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory, or a GGUF file (llama/qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
	adapterDir := fs.String("adapter", "", "PEFT LoRA adapter directory (e.g. a train --out)")
	prompt := fs.String("prompt", "", "complete this text")
	dataPath := fs.String("data", "", "complete the prompt of every line of this JSONL file (prompt, messages, instruction or text)")
	chat := fs.Bool("chat", false, "wrap prompts in the model's chat template")
	maxNew := fs.Int("max-new-tokens", 256, "most tokens to generate per prompt")
	temperature := fs.Float64("temperature", 0, "sampling temperature (0: greedy)")
	topP := fs.Float64("top-p", 1, "nucleus sampling threshold")
	seed := fs.Uint64("seed", 0, "sampling seed")
	stop := fs.String("stop", "", "stop before this string (repeatable with commas)")
	bf16 := fs.Bool("bf16", false, "keep weights as bf16 on the GPU")
	jsonOut := fs.Bool("json", false, "print one JSON line per prompt instead of streaming text: {\"prompt_ids\", \"ids\" (generated, without the EOS), \"text\", \"reason\"}")
	var quant quantizeFlags
	addQuantizeFlags(fs, &quant)
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	promptGiven := false
	fs.Visit(func(f *flag.Flag) { promptGiven = promptGiven || f.Name == "prompt" })
	switch {
	case *modelDir == "":
		fmt.Fprintln(stderr, "sparselora generate: missing --model DIR (run with --help)")
		return errUsage
	case *maxNew <= 0 || *maxNew > 1<<20:
		return fmt.Errorf("--max-new-tokens %d: want 1..1048576", *maxNew)
	case *temperature < 0 || *temperature > 100:
		return fmt.Errorf("--temperature %g: want 0 (greedy) .. 100", *temperature)
	case *topP <= 0 || *topP > 1:
		return fmt.Errorf("--top-p %g: want 0 < p <= 1", *topP)
	case promptGiven && *dataPath != "":
		return errors.New("--prompt and --data: give one of them")
	}
	if *dataPath != "" {
		if _, err := os.Stat(*dataPath); err != nil {
			return fmt.Errorf("--data: %w", err)
		}
	}
	var err error
	if *modelDir, err = ggufModel(*modelDir, stderr); err != nil {
		return err
	}
	lm, err := openModel(&df, *modelDir, *adapterDir, *bf16, quant, stderr)
	if err != nil {
		return err
	}
	defer lm.close()
	sess, err := infer.NewSession(lm.m, lm.tok, *modelDir, lm.m.Config.MaxPositionEmbeddings)
	if err != nil {
		return err
	}
	defer sess.Release()
	if maxPos := lm.m.Config.MaxPositionEmbeddings; *maxNew >= maxPos {
		fmt.Fprintf(stderr, "sparselora generate: note: the model has %d positions; completions stop there, before --max-new-tokens %d\n", maxPos, *maxNew)
	}
	opts := infer.Options{MaxNewTokens: *maxNew, OnText: func(s string) error {
		_, err := io.WriteString(stdout, s)
		return err
	}}
	// finish ends a completion's output: a newline after the streamed text,
	// or with --json the completion as one JSON line.
	finish := func(prompt []int32, c infer.Completion) error {
		if !*jsonOut {
			_, err := fmt.Fprintln(stdout)
			return err
		}
		line, err := json.Marshal(struct {
			PromptIDs []int32 `json:"prompt_ids"`
			IDs       []int32 `json:"ids"`
			Text      string  `json:"text"`
			Reason    string  `json:"reason"`
		}{prompt, append([]int32{}, c.IDs...), c.Text, c.Reason})
		if err == nil {
			_, err = fmt.Fprintf(stdout, "%s\n", line)
		}
		return err
	}
	if *jsonOut {
		opts.OnText = nil
	}
	if *stop != "" {
		opts.Stop = strings.Split(*stop, ",")
	}
	if *temperature > 0 {
		opts.Sampler = model.Sampling{Temperature: *temperature, TopP: *topP, Rand: rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))}
	}
	encode := func(text string) ([]int32, error) {
		if *chat {
			msgs, _ := json.Marshal([]map[string]string{{"role": "user", "content": text}})
			return sess.PromptChat(msgs)
		}
		return sess.PromptText(text), nil
	}
	complete := func(ids []int32) (infer.Completion, error) {
		c, err := sess.Complete(ctx, ids, opts)
		if err != nil {
			if !*jsonOut {
				fmt.Fprintln(stdout)
			}
			return c, err
		}
		return c, finish(ids, c)
	}
	switch {
	case promptGiven:
		ids, err := encode(*prompt)
		if err != nil {
			return err
		}
		_, err = complete(ids)
		return err
	case *dataPath != "":
		return generateFromFile(ctx, *dataPath, encode, sess, complete, !*jsonOut, stdout)
	}
	return generateInteractive(ctx, os.Stdin, isTerminal(os.Stdin), *chat || lm.tok.HasChatTemplate(), encode, sess, opts, finish, stdout, stderr)
}

// generateFromFile completes the prompt of each JSONL line.
func generateFromFile(ctx context.Context, path string, encode func(string) ([]int32, error), sess *infer.Session,
	complete func([]int32) (infer.Completion, error), headers bool, stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), maxPromptLine)
	prompts := 0
	line := 1
	for ; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var ex struct {
			Prompt      string          `json:"prompt"`
			Text        string          `json:"text"`
			Instruction string          `json:"instruction"`
			Input       string          `json:"input"`
			Messages    json.RawMessage `json:"messages"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ex); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		var ids []int32
		switch {
		case len(ex.Messages) > 0:
			var msgs json.RawMessage
			if msgs, err = promptMessages(ex.Messages); err == nil {
				ids, err = sess.PromptChat(msgs)
			}
		case ex.Prompt != "":
			ids, err = encode(ex.Prompt)
		case ex.Instruction != "":
			ids, err = encode(data.AlpacaPrompt(ex.Instruction, ex.Input))
		case ex.Text != "":
			ids, err = encode(ex.Text)
		default:
			err = errors.New("no prompt, messages, instruction or text")
		}
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		prompts++
		if headers {
			fmt.Fprintf(stdout, "### line %d\n", line)
		}
		if _, err := complete(ids); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return scanError(path, line, err, maxPromptLine)
	}
	if prompts == 0 {
		return fmt.Errorf("%s: no prompts (the file has no non-blank lines)", path)
	}
	return nil
}

// maxPromptLine bounds one line of generate --data.
const maxPromptLine = 64 << 20

// promptMessages is a conversation without its final assistant turn: the
// prompt whose reply is generated, as eval's exact match does.
func promptMessages(raw json.RawMessage) (json.RawMessage, error) {
	var msgs []json.RawMessage
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return nil, fmt.Errorf("\"messages\": want an array of {\"role\", \"content\"} objects: %w", err)
	}
	if len(msgs) == 0 {
		return nil, errors.New("\"messages\": empty")
	}
	var last struct {
		Role string `json:"role"`
	}
	if err := json.Unmarshal(msgs[len(msgs)-1], &last); err == nil && last.Role == "assistant" {
		msgs = msgs[:len(msgs)-1]
	}
	if len(msgs) == 0 {
		return nil, errors.New("\"messages\": only an assistant turn, no prompt")
	}
	return json.Marshal(msgs)
}

// generateInteractive reads prompts from in: a conversation kept across
// turns with chat, one independent completion per line otherwise.
func generateInteractive(ctx context.Context, in io.Reader, showPrompts, chat bool, encode func(string) ([]int32, error), sess *infer.Session,
	opts infer.Options, finish func([]int32, infer.Completion) error, stdout, stderr io.Writer) error {
	mode := "one completion per line"
	if chat {
		mode = "chat; /reset starts over"
	}
	// Prompts are for a person at a terminal; piped input gets completions only.
	if showPrompts {
		fmt.Fprintf(stderr, "interactive (%s); end with Ctrl-D\n", mode)
	}
	var history []map[string]string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for {
		if showPrompts {
			fmt.Fprint(stderr, "> ")
		}
		if !sc.Scan() {
			if showPrompts {
				fmt.Fprintln(stderr)
			}
			return sc.Err()
		}
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		if chat && text == "/reset" {
			history = nil
			continue
		}
		var ids []int32
		var err error
		if chat {
			history = append(history, map[string]string{"role": "user", "content": text})
			msgs, _ := json.Marshal(history)
			ids, err = sess.PromptChat(msgs)
		} else {
			ids, err = encode(text)
		}
		if err != nil {
			return err
		}
		c, err := sess.Complete(ctx, ids, opts)
		if err != nil {
			if opts.OnText != nil {
				fmt.Fprintln(stdout)
			}
			return err
		}
		if err := finish(ids, c); err != nil {
			return err
		}
		if chat {
			history = append(history, map[string]string{"role": "assistant", "content": c.Text})
		}
	}
}
