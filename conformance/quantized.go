package conformance

import (
	"context"
	"fmt"
	"math"
	"path/filepath"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

// tolQuantized is the relative L2 error allowed between a quantized model
// and its dequantized twin: the same weights, read from codes in the kernels
// or from f32, differ only in the rounding of s*q + b and its order.
const tolQuantized = 1e-5

// Quantized checks DIR/model quantized at load (spec, MLX's format and
// rounding) against the same model dequantized: a twin whose f32 weights are
// the quantized model's s*q + b. Both run the reference batch of
// DIR/reference.safetensors for two AdamW steps from DIR/adapter_init (the
// settings of DIR/reference.json); the logits, losses, LoRA gradients and
// parameters after each step must agree to 1e-5. The fixture's Hugging Face
// reference is of the float model, so it is not the yardstick here.
func Quantized(ctx context.Context, dev *gpu.Device, dir string, spec model.Quantization) ([]Check, error) {
	ref, tensors, batch, cfg, err := openReference(dir)
	if err != nil {
		return nil, err
	}
	defer tensors.Close()
	open := func(quantize *model.Quantization) (*train.Trainer, error) {
		return train.New(ctx, dev, train.Settings{
			Model:    train.ModelSource{Dir: filepath.Join(dir, "model"), DType: gpu.F32, Quantize: quantize},
			Params:   train.ParamSource{AdapterDir: filepath.Join(dir, "adapter_init")},
			AdamW:    cfg,
			Schedule: optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 2, BaseRate: ref.Optimizer.LR},
			Rows:     batch.Rows,
			Seq:      batch.Seq,
			Estimate: predictor.EstimateOptions{NoCache: true},
		})
	}
	q, err := open(&spec)
	if err != nil {
		return nil, err
	}
	defer q.Release()
	twin, err := open(nil)
	if err != nil {
		return nil, err
	}
	defer twin.Release()
	floats, quantized := twin.Model.NamedTensors(), 0
	for name, w := range q.Model.NamedTensors() {
		if w.DType != gpu.Quantized {
			continue
		}
		quantized++
		values, err := w.Download(ctx)
		if err != nil {
			return nil, err
		}
		if err := floats[name].Upload(values); err != nil {
			return nil, fmt.Errorf("conformance: dequantized twin: %s: %w", name, err)
		}
	}
	// An embedding table kept in host memory (untied head) is the twin's too.
	if e := q.Model.HostEmbed; e != nil && e.DType() == gpu.Quantized {
		quantized++
		twin.Model.HostEmbed = e.Dequantized()
	}
	if quantized == 0 {
		return nil, fmt.Errorf("conformance: %s/model: no weight is quantized with %s (the group must divide the input sizes)", dir, spec)
	}

	T := batch.Rows * batch.Seq
	var logits [2]*gpu.Tensor
	for i := range logits {
		if logits[i], err = dev.NewTensor(gpu.F32, "logits", T, q.Model.Config.VocabSize); err != nil {
			return nil, err
		}
		defer logits[i].Release()
	}
	var checks []Check
	compare := func(name string, got, want *gpu.Tensor) error {
		g, err := got.Download(ctx)
		if err != nil {
			return err
		}
		w, err := want.Download(ctx)
		if err != nil {
			return err
		}
		checks = append(checks, Check{Name: name, Err: relErr(g, w, nil), Tolerance: tolQuantized})
		return nil
	}
	for step := 1; step <= 2; step++ {
		var outQ, outT *gpu.Tensor
		if step == 1 {
			outQ, outT = logits[0], logits[1]
		}
		lossQ, err := trainStep(ctx, q, batch, nil, outQ)
		if err != nil {
			return nil, err
		}
		lossT, err := trainStep(ctx, twin, batch, nil, outT)
		if err != nil {
			return nil, err
		}
		if step == 1 {
			if err := compare(fmt.Sprintf("logits (%s, %d weights quantized)", spec, quantized), outQ, outT); err != nil {
				return nil, err
			}
		}
		lossErr := math.Abs(lossQ-lossT) / math.Abs(lossT)
		if math.IsNaN(lossErr) {
			lossErr = math.Inf(1)
		}
		checks = append(checks, Check{Name: fmt.Sprintf("loss (step %d)", step), Err: lossErr, Tolerance: tolQuantized})
		pq, pt := q.Adapters.Params(), twin.Adapters.Params()
		for _, part := range []struct {
			label string
			pick  func(optim.Param) *gpu.Tensor
		}{{"LoRA gradients", func(p optim.Param) *gpu.Tensor { return p.Grad }}, {"parameters after the step", func(p optim.Param) *gpu.Tensor { return p.Value }}} {
			worst := Check{Name: fmt.Sprintf("%s (step %d, %d tensors)", part.label, step, len(pq)), Tolerance: tolQuantized}
			for i := range pq {
				g, err := part.pick(pq[i]).Download(ctx)
				if err != nil {
					return nil, err
				}
				w, err := part.pick(pt[i]).Download(ctx)
				if err != nil {
					return nil, err
				}
				if e := relErr(g, w, nil); e > worst.Err {
					worst.Err, worst.Note = e, "worst: "+pq[i].Name
				}
			}
			checks = append(checks, worst)
		}
	}
	return checks, nil
}
