package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sparselora/sparselora/data"
	"github.com/sparselora/sparselora/evaluate"
	"github.com/sparselora/sparselora/infer"
	"github.com/sparselora/sparselora/internal/atomicfile"
)

func runEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("eval", "eval --model DIR [--adapter DIR] --data FILE.jsonl [--metric loss|exact-match] [flags]", stdout, stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory, or a GGUF file (llama/qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
	adapterDir := fs.String("adapter", "", "PEFT LoRA adapter directory (e.g. a train --out)")
	dataPath := fs.String("data", "", "evaluation data, JSONL (the train formats)")
	metric := fs.String("metric", "loss", "loss (mean cross-entropy and perplexity over scored tokens) or exact-match (greedy completions vs answers)")
	batch := fs.Int("batch-size", 4, "sequences per forward pass (loss)")
	maxNew := fs.Int("max-new-tokens", 64, "most tokens generated per example (exact-match)")
	maxSeqLen := fs.Int("max-seq-len", 2048, "truncate examples to this many tokens")
	out := fs.String("out", "", "write per-example results as JSONL (exact-match)")
	bf16 := fs.Bool("bf16", false, "keep weights as bf16 on the GPU")
	var quant quantizeFlags
	addQuantizeFlags(fs, &quant)
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, value, what string }{{"model", *modelDir, "DIR"}, {"data", *dataPath, "FILE.jsonl"}} {
		if f.value == "" {
			fmt.Fprintf(stderr, "sparselora eval: missing --%s %s (run with --help)\n", f.name, f.what)
			return errUsage
		}
	}
	switch {
	case *metric != "loss" && *metric != "exact-match":
		return fmt.Errorf("--metric %q: want loss or exact-match", *metric)
	case *batch <= 0 || *batch > 4096:
		return fmt.Errorf("--batch-size %d: want 1..4096", *batch)
	case *maxNew <= 0 || *maxNew > 1<<20:
		return fmt.Errorf("--max-new-tokens %d: want 1..1048576", *maxNew)
	case *maxSeqLen < 2:
		return fmt.Errorf("--max-seq-len %d: want at least 2", *maxSeqLen)
	case *out != "" && *metric != "exact-match":
		return errors.New("--out: per-example results come with --metric exact-match")
	}
	// Fail before loading the model, not after it; and leave an existing
	// --out file alone until there are results to replace it with.
	if err := checkOutputPath("out", *out); err != nil {
		return err
	}
	var err error
	if *modelDir, err = ggufModel(*modelDir, stderr); err != nil {
		return err
	}
	if st, err := os.Stat(*dataPath); err != nil {
		return fmt.Errorf("--data: %w", err)
	} else if st.IsDir() {
		return fmt.Errorf("--data %s: is a directory, want a JSONL file", *dataPath)
	}
	lm, err := openModel(&df, *modelDir, *adapterDir, *bf16, quant, stdout)
	if err != nil {
		return err
	}
	defer lm.close()
	ds, err := data.LoadContext(ctx, *dataPath, lm.tok, data.Options{MaxSeqLen: *maxSeqLen, VocabSize: lm.m.Config.VocabSize})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "data: %s: %d examples (%s), %d scored tokens\n", ds.Path, len(ds.Examples), ds.Format, ds.ScoredTokens)
	if *metric == "loss" {
		if maxPos := lm.m.Config.MaxPositionEmbeddings; maxPos > 0 && ds.MaxLen > maxPos {
			return fmt.Errorf("%s: examples of %d tokens exceed the model's max_position_embeddings %d (lower --max-seq-len)", ds.Path, ds.MaxLen, maxPos)
		}
		ev, err := evaluate.NewEvaluator(lm.m, *batch, ds.MaxLen)
		if err != nil {
			return err
		}
		defer ev.Release()
		res, err := ev.Loss(ctx, ds)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "loss %.4f  perplexity %.3f  (%d scored tokens)\n", res.Loss, res.Perplexity, res.Targets)
		return nil
	}
	sess, err := infer.NewSession(lm.m, lm.tok, *modelDir, ds.MaxLen+*maxNew)
	if err != nil {
		return err
	}
	defer sess.Release()
	progress := isTerminal(stdout)
	sum, results, err := evaluate.ExactMatch(ctx, sess, ds, *maxNew, func(r evaluate.Result) {
		if progress {
			fmt.Fprintf(stdout, "\rline %d: %t   ", r.Line, r.Correct)
		}
	})
	if progress {
		fmt.Fprint(stdout, "\r\033[K")
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "exact match: %d / %d = %.1f %% (95 %% CI %.1f-%.1f %%)\n", sum.Correct, sum.N, 100*sum.Accuracy, 100*sum.Lo, 100*sum.Hi)
	if *out != "" {
		return atomicfile.Write(*out, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetEscapeHTML(false)
			for _, r := range results {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return nil
}
