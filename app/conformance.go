package app

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/sparselora/sparselora/conformance"
	"github.com/sparselora/sparselora/model"
)

func runConformance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("conformance", "conformance [--bf16 | --sparse | --quantize 4|8 [--group-size 64]] DIR", stdout, stderr)
	bf16 := fs.Bool("bf16", false, "load DIR/model-bf16 with frozen weights kept as bf16 and check the forward pass")
	sparse := fs.Bool("sparse", false, "check one SparseLoRA step with the sparsity and rank of DIR/sparse_reference.json")
	quantize := fs.Int("quantize", 0, "check DIR/model quantized at load to 4 or 8 bits (MLX's format) against the same model dequantized, two steps")
	group := fs.Int("group-size", 64, "inputs per quantization group with --quantize: 32, 64 or 128")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args, "DIR"); err != nil {
		return err
	}
	dir := fs.Arg(0)
	if *sparse && *bf16 || *quantize != 0 && (*sparse || *bf16) {
		fmt.Fprintln(stderr, "conformance: --sparse, --bf16 and --quantize are separate checks; pick one")
		return errUsage
	}
	spec := model.Quantization{Bits: *quantize, GroupSize: *group}
	if *quantize != 0 {
		if err := spec.Check(); err != nil {
			return fmt.Errorf("--quantize %d --group-size %d: %w", *quantize, *group, err)
		}
	}
	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeUnlessInterrupted(ctx, closeDev)
	var checks []conformance.Check
	switch {
	case *sparse:
		checks, err = conformance.Sparse(ctx, dev, dir)
	case *quantize != 0:
		checks, err = conformance.Quantized(ctx, dev, dir, spec)
	default:
		checks, err = conformance.Dense(ctx, dev, dir, *bf16)
	}
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tREL. ERROR\tTOLERANCE\tRESULT")
	failed := 0
	for _, c := range checks {
		result := "ok"
		if !c.OK() {
			result = "FAIL"
			failed++
		}
		if c.Note != "" {
			result += " (" + c.Note + ")"
		}
		fmt.Fprintf(tw, "%s\t%.3g\t%.0e\t%s\n", c.Name, c.Err, c.Tolerance, result)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d checks over tolerance for %s", failed, len(checks), dir)
	}
	fmt.Fprintf(stdout, "all %d checks pass\n", len(checks))
	return nil
}
