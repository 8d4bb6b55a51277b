package app

import (
	"context"
	"fmt"
	"io"

	"github.com/sparselora/sparselora/model"
)

// quantizeFlags are --quantize and --group-size, shared by the commands that
// load a model (train keeps its copy in train.Config).
type quantizeFlags struct{ bits, group int }

func addQuantizeFlags(fs interface {
	IntVar(p *int, name string, value int, usage string)
}, q *quantizeFlags) {
	fs.IntVar(&q.bits, "quantize", 0, "quantize the frozen f32/bf16/f16 weights at load to 4 or 8 bits (MLX's affine format and rounding; 0: as stored)")
	fs.IntVar(&q.group, "group-size", 64, "inputs per quantization group with --quantize: 32, 64 or 128")
}

// spec is the quantization asked for, nil without --quantize.
func (q quantizeFlags) spec() (*model.Quantization, error) {
	if q.bits == 0 {
		return nil, nil
	}
	s := &model.Quantization{Bits: q.bits, GroupSize: q.group}
	if err := s.Check(); err != nil {
		return nil, fmt.Errorf("--quantize %d --group-size %d: %w", q.bits, q.group, err)
	}
	return s, nil
}

func runQuantize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("quantize", "quantize --model DIR --bits 4|8 [--group-size 64] --out DIR", stdout, stderr)
	modelDir := fs.String("model", "", "float HF checkpoint directory (config.json, safetensors)")
	outDir := fs.String("out", "", "directory for the MLX-format quantized checkpoint (must not exist)")
	bits := fs.Int("bits", 4, "bits per weight: 4 or 8")
	group := fs.Int("group-size", 64, "inputs per group sharing a scale and bias: 32, 64 or 128")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{{"model", *modelDir}, {"out", *outDir}} {
		if f.value == "" {
			fmt.Fprintf(stderr, "sparselora quantize: --%s is required (run with --help)\n", f.name)
			return errUsage
		}
	}
	spec := model.Quantization{Bits: *bits, GroupSize: *group}
	if err := spec.Check(); err != nil {
		return fmt.Errorf("--bits %d --group-size %d: %w", *bits, *group, err)
	}
	report, err := model.QuantizeCheckpoint(*modelDir, *outDir, spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-48s %-12s %12s %12s %10s\n", "tensor", "shape", "max |err|", "rms err", "rel err")
	quantized := 0
	for _, r := range report {
		if r.Kept {
			fmt.Fprintf(stdout, "%-48s %-12s kept float: the group of %d does not divide its %d inputs\n", r.Name, fmt.Sprint(r.Shape), spec.GroupSize, r.Shape[1])
			continue
		}
		quantized++
		fmt.Fprintf(stdout, "%-48s %-12s %12.4g %12.4g %10.4g\n", r.Name, fmt.Sprint(r.Shape), r.MaxAbsError, r.RMSError, r.RelativeError)
	}
	fmt.Fprintf(stdout, "quantized %d weights (%s) into %s\n", quantized, spec, *outDir)
	return nil
}
