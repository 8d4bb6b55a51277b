package app

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/sparselora/sparselora/conformance"
)

func runConformance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("conformance", "conformance [--bf16 | --sparse] DIR", stdout, stderr)
	bf16 := fs.Bool("bf16", false, "load DIR/model-bf16 with frozen weights kept as bf16 and check the forward pass")
	sparse := fs.Bool("sparse", false, "check one SparseLoRA step with the sparsity and rank of DIR/sparse_reference.json")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args, "DIR"); err != nil {
		return err
	}
	dir := fs.Arg(0)
	if *sparse && *bf16 {
		fmt.Fprintln(stderr, "conformance: --sparse and --bf16 are separate checks; pick one")
		return errUsage
	}
	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeUnlessInterrupted(ctx, closeDev)
	var checks []conformance.Check
	if *sparse {
		checks, err = conformance.Sparse(ctx, dev, dir)
	} else {
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
