package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
func openModel(df *deviceFlags, dir, adapterDir string, bf16 bool, stdout io.Writer) (*loadedModel, error) {
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
	m, warnings, err := model.LoadWithWarnings(dev, dir, dtype)
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

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", "generate --model DIR [--adapter DIR] [--prompt TEXT | --data FILE.jsonl] [--chat] [flags]\n\n"+
		"Without --prompt or --data, reads prompts from standard input: a chat session with --chat (or\n"+
		"when the model has a chat template), one completion per line otherwise.", stdout, stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory")
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
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	switch {
	case *modelDir == "":
		return errors.New("--model: a model directory is required")
	case *maxNew <= 0 || *maxNew > 1<<20:
		return fmt.Errorf("--max-new-tokens %d: want 1..1048576", *maxNew)
	case *temperature < 0 || *temperature > 100:
		return fmt.Errorf("--temperature %g: want 0 (greedy) .. 100", *temperature)
	case *topP <= 0 || *topP > 1:
		return fmt.Errorf("--top-p %g: want 0 < p <= 1", *topP)
	case *prompt != "" && *dataPath != "":
		return errors.New("--prompt and --data: give one of them")
	}
	lm, err := openModel(&df, *modelDir, *adapterDir, *bf16, stderr)
	if err != nil {
		return err
	}
	defer lm.close()
	sess, err := infer.NewSession(lm.m, lm.tok, *modelDir, lm.m.Config.MaxPositionEmbeddings)
	if err != nil {
		return err
	}
	defer sess.Release()
	opts := infer.Options{MaxNewTokens: *maxNew, OnText: func(s string) error {
		_, err := io.WriteString(stdout, s)
		return err
	}}
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
		fmt.Fprintln(stdout)
		return c, err
	}
	switch {
	case *prompt != "":
		ids, err := encode(*prompt)
		if err != nil {
			return err
		}
		_, err = complete(ids)
		return err
	case *dataPath != "":
		return generateFromFile(ctx, *dataPath, encode, sess, complete, stdout)
	}
	return generateInteractive(ctx, os.Stdin, *chat || lm.tok.HasChatTemplate(), encode, sess, opts, stdout, stderr)
}

// generateFromFile completes the prompt of each JSONL line.
func generateFromFile(ctx context.Context, path string, encode func(string) ([]int32, error), sess *infer.Session,
	complete func([]int32) (infer.Completion, error), stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	for line := 1; sc.Scan(); line++ {
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
			ids, err = sess.PromptChat(ex.Messages)
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
		fmt.Fprintf(stdout, "### line %d\n", line)
		if _, err := complete(ids); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return sc.Err()
}

// generateInteractive reads prompts from in: a conversation kept across
// turns with chat, one independent completion per line otherwise.
func generateInteractive(ctx context.Context, in io.Reader, chat bool, encode func(string) ([]int32, error), sess *infer.Session,
	opts infer.Options, stdout, stderr io.Writer) error {
	mode := "one completion per line"
	if chat {
		mode = "chat; /reset starts over"
	}
	fmt.Fprintf(stderr, "interactive (%s); end with Ctrl-D\n", mode)
	var history []map[string]string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for {
		fmt.Fprint(stderr, "> ")
		if !sc.Scan() {
			fmt.Fprintln(stderr)
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
		fmt.Fprintln(stdout)
		if err != nil {
			return err
		}
		if chat {
			history = append(history, map[string]string{"role": "assistant", "content": c.Text})
		}
	}
}
