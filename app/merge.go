package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model/safetensors"
)

func runMerge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("merge", "merge --model DIR --adapter DIR --out DIR [--dtype f32|bf16] [--max-shard-size 5GB] [--force]", stdout, stderr)
	modelDir := fs.String("model", "", "base model: an HF checkpoint directory (config.json, safetensors)")
	adapterDir := fs.String("adapter", "", "PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)")
	outDir := fs.String("out", "", "directory for the merged HF checkpoint (must not exist or be empty, unless --force)")
	dtype := fs.String("dtype", "", "dtype of the written weights: f32 or bf16 (default: each tensor's own dtype)")
	shardSize := fs.String("max-shard-size", "5GB", "largest safetensors file before the checkpoint is sharded (bytes, or with KB/MB/GB/KiB/MiB/GiB)")
	force := fs.Bool("force", false, "replace a non-empty --out directory")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{{"model", *modelDir}, {"adapter", *adapterDir}, {"out", *outDir}} {
		if f.value == "" {
			fmt.Fprintf(stderr, "sparselora merge: --%s is required (run with --help)\n", f.name)
			return errUsage
		}
	}
	if err := checkAdapterDir(*adapterDir); err != nil {
		return err
	}
	opts := lora.MergeOptions{Force: *force}
	switch strings.ToLower(*dtype) {
	case "":
	case "f32", "float32":
		opts.Dtype = safetensors.F32
	case "bf16", "bfloat16":
		opts.Dtype = safetensors.BF16
	default:
		return fmt.Errorf("--dtype %q: want f32 or bf16", *dtype)
	}
	maxBytes, err := parseByteSize(*shardSize)
	if err != nil {
		return fmt.Errorf("--max-shard-size %q: %w", *shardSize, err)
	}
	opts.MaxShardBytes = maxBytes

	report, err := lora.Merge(ctx, *modelDir, *adapterDir, *outDir, opts)
	if errors.Is(err, lora.ErrOutDirNotEmpty) {
		return fmt.Errorf("--out %s is not empty (add --force to replace it whole)", *outDir)
	}
	if err != nil {
		return err
	}
	for _, w := range report.Warnings {
		fmt.Fprintf(stderr, "sparselora merge: warning: %s\n", w)
	}
	scale := fmt.Sprintf("alpha/r = %g/%d", report.Alpha, report.Rank)
	if report.RSLoRA {
		scale = fmt.Sprintf("alpha/sqrt(r) = %g/sqrt(%d)", report.Alpha, report.Rank)
	}
	if report.BaseQuantized != nil {
		fmt.Fprintf(stdout, "the base model is quantized (%s): its weights were dequantized, merged and written as %s\n", report.BaseQuantized, report.Dtype)
	}
	fmt.Fprintf(stdout, "merged %d projections (scale %s = %g) into %s\n", len(report.Merged), scale, report.Scale, report.OutDir)
	fmt.Fprintf(stdout, "wrote %d tensors (%.1f MB): %s\n", report.Tensors, float64(report.TensorBytes)/1e6, strings.Join(report.Files, ", "))
	return nil
}

// byteUnits are the suffixes --max-shard-size accepts, as transformers'
// max_shard_size does: decimal KB/MB/GB and binary KiB/MiB/GiB.
var byteUnits = []struct {
	suffix string
	factor int64
}{
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
}

// parseByteSize reads a positive size such as 5GB, 500MiB or 1000000.
func parseByteSize(s string) (int64, error) {
	text := strings.ToUpper(strings.TrimSpace(s))
	factor := int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(text, u.suffix); ok {
			text, factor = strings.TrimSpace(rest), u.factor
			break
		}
	}
	n, err := strconv.ParseFloat(text, 64)
	if bytes := n * float64(factor); err != nil || !(bytes >= 1 && bytes <= 1<<62) {
		return 0, fmt.Errorf("want a size of at least one byte such as 5GB, 500MiB or 1000000")
	}
	return int64(n * float64(factor)), nil
}
