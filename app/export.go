package app

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sparselora/sparselora/llamacpp"
	"github.com/sparselora/sparselora/model/gguf"
)

func runExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "gguf" {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			fmt.Fprintln(stdout, "usage: sparselora export gguf [flags]\n\nformats:\n  gguf   llama.cpp / Ollama / LM Studio (run `sparselora export gguf --help`)")
			return nil
		}
		fmt.Fprintln(stderr, "sparselora export: want a format: export gguf (run `sparselora export gguf --help`)")
		return errUsage
	}
	return runExportGGUF(ctx, args[1:], stdout, stderr)
}

func runExportGGUF(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("export gguf", "export gguf --model DIR [--adapter DIR] [--adapter-only] [--dtype f32|f16|bf16|q8_0|q4_0] --out FILE.gguf\n\n"+
		"Writes the model (with the adapter merged in) as a GGUF file for llama.cpp, Ollama and LM Studio,\n"+
		"with its configuration, tokenizer and chat template; --adapter-only writes the adapter alone as\n"+
		"llama.cpp's LoRA adapter GGUF (llama-cli --lora, Ollama's ADAPTER).", stdout, stderr)
	modelDir := fs.String("model", "", "base model: an HF checkpoint directory (config.json, safetensors, tokenizer.json)")
	adapterDir := fs.String("adapter", "", "PEFT LoRA adapter directory to merge in (e.g. a train --out)")
	adapterOnly := fs.Bool("adapter-only", false, "write the adapter alone as a llama.cpp LoRA adapter GGUF")
	dtype := fs.String("dtype", "", "type of the weight matrices: f32, f16, bf16, q8_0 or q4_0 (default: the model's own float type; f32 for --adapter-only); norms and biases stay f32")
	out := fs.String("out", "", "the GGUF file to write")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{{"model", *modelDir}, {"out", *out}} {
		if f.value == "" {
			fmt.Fprintf(stderr, "sparselora export gguf: --%s is required (run with --help)\n", f.name)
			return errUsage
		}
	}
	if *adapterOnly && *adapterDir == "" {
		return fmt.Errorf("--adapter-only needs --adapter")
	}
	if err := checkAdapterDir(*adapterDir); err != nil {
		return err
	}
	opts := llamacpp.ExportOptions{ModelDir: *modelDir, AdapterDir: *adapterDir, AdapterOnly: *adapterOnly, Out: *out}
	if *dtype != "" {
		t, ok := gguf.ParseTensorType(*dtype)
		switch {
		case !ok, t != gguf.F32 && t != gguf.F16 && t != gguf.BF16 && t != gguf.Q8_0 && t != gguf.Q4_0:
			return fmt.Errorf("--dtype %q: want f32, f16, bf16, q8_0 or q4_0", *dtype)
		}
		opts.Type, opts.TypeSet = t, true
	}
	start := time.Now()
	rep, err := llamacpp.Export(ctx, opts)
	if err != nil {
		return err
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(stderr, "sparselora export gguf: warning: %s\n", w)
	}
	if len(rep.Fallbacks) > 0 {
		fmt.Fprintf(stderr, "sparselora export gguf: note: %d weight(s) written as F16, their rows not being whole %s blocks: %s\n",
			len(rep.Fallbacks), rep.Type, strings.Join(rep.Fallbacks, ", "))
	}
	what := "model"
	switch {
	case *adapterOnly:
		what = fmt.Sprintf("LoRA adapter (%d projections)", len(rep.Merged))
	case *adapterDir != "":
		what = fmt.Sprintf("model with the adapter merged into %d projections", len(rep.Merged))
	}
	fmt.Fprintf(stdout, "wrote %s: %s, architecture %s, %s, %d tensors, %.1f MB in %s\n",
		*out, what, rep.Arch, rep.Type, rep.Tensors, float64(rep.Bytes)/1e6, time.Since(start).Round(time.Millisecond))
	if rep.BaseQuantization != "" {
		fmt.Fprintf(stdout, "base %s: quantized, %s (recorded as %s)\n", *modelDir, rep.BaseQuantization, llamacpp.KeyBaseQuantization)
	}
	return nil
}

// ggufModel resolves a --model that names a GGUF file to the HF checkpoint
// made from it (llamacpp.Materialize, cached in the user cache folder) and
// says so on w; any other path is returned unchanged. Q8_0, Q4_0 and Q4_1
// weights stay quantized (MLX's affine format); the rest is float32.
func ggufModel(path string, w io.Writer) (string, error) {
	if path == "" || !llamacpp.IsGGUF(path) {
		return path, nil
	}
	root, err := llamacpp.CacheRoot()
	if err != nil {
		return "", err
	}
	rep, err := llamacpp.Materialize(path, root)
	if err != nil {
		return "", fmt.Errorf("--model %s: %w", path, err)
	}
	how := "converted"
	if rep.Cached {
		how = "converted earlier"
	}
	weights := "float32 weights"
	if rep.Quantized > 0 {
		weights = fmt.Sprintf("%d weights kept quantized (8/4-bit group-affine codes, groups of 32), the rest float32", rep.Quantized)
	}
	fmt.Fprintf(w, "model %s: GGUF (%s; %s), %s to an HF checkpoint with %s in %s\n", path, rep.Arch, rep.TypeSummary(), how, weights, rep.Dir)
	if len(rep.WideScales) > 0 {
		fmt.Fprintf(w, "model %s: note: %d weight(s) keep f32 scales (a block's offset overflows f16): %s\n", path, len(rep.WideScales), strings.Join(rep.WideScales, ", "))
	}
	if len(rep.Dequantized) > 0 {
		fmt.Fprintf(w, "model %s: note: block-quantized 1-D tensors dequantized to float32: %s\n", path, strings.Join(rep.Dequantized, ", "))
	}
	return rep.Dir, nil
}
