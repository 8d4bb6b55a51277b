// Package conformance checks the training step against the fixtures' Hugging
// Face transformers + PEFT references (SPEC.md section 5): activations,
// logits, loss, LoRA gradients, parameters after two AdamW steps and greedy
// generation, with f32 or bf16 frozen weights, and one SparseLoRA step's SVD
// factors, scores, selected channels, token roles, logits, loss and
// gradients. It builds the step with train.New, as training does, and
// returns one Check per comparison; it prints nothing.
package conformance

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

// Tolerances of SPEC section 5 (relative L2 error).
const (
	tolActivations = 1e-4
	tolGradients   = 1e-3
)

// referenceJSON is the part of a fixture's reference.json that the run needs.
type referenceJSON struct {
	Lora struct {
		R     int     `json:"r"`
		Alpha float64 `json:"alpha"`
	} `json:"lora"`
	Optimizer struct {
		LR          float64   `json:"lr"`
		Betas       []float64 `json:"betas"`
		Eps         float64   `json:"eps"`
		WeightDecay float64   `json:"weight_decay"`
	} `json:"optimizer"`
	Losses          []float64 `json:"losses"`
	LossBF16Weights *float64  `json:"loss_bf16_weights"`
}

// Check is one comparison with the reference: the relative L2 error of a
// tensor (0 or 1 for exact comparisons such as selected channels) and the
// tolerance it must not exceed.
type Check struct {
	Name      string
	Err       float64
	Tolerance float64
	// Note says more, e.g. which tensor was worst.
	Note string
}

// OK reports whether the error is within tolerance.
func (c Check) OK() bool { return c.Err <= c.Tolerance }

// relErr is the relative L2 error of got against want over the selected
// elements (all when keep is nil).
func relErr(got, want []float32, keep func(i int) bool) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range want {
		if keep != nil && !keep(i) {
			continue
		}
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if math.IsNaN(num) {
		return math.Inf(1)
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func readInts(f *safetensors.File, name string) ([]int32, []int, error) {
	info, err := f.Info(name)
	if err != nil {
		return nil, nil, err
	}
	raw, err := f.ReadRaw(name)
	if err != nil {
		return nil, nil, err
	}
	var size int
	switch info.Dtype {
	case "I64":
		size = 8
	case "I32":
		size = 4
	default:
		return nil, nil, fmt.Errorf("%s: tensor %s has dtype %s, want I64 or I32", f.Path(), name, info.Dtype)
	}
	out := make([]int32, len(raw)/size)
	for i := range out {
		if size == 8 {
			v := int64(binary.LittleEndian.Uint64(raw[8*i:]))
			if v < math.MinInt32 || v > math.MaxInt32 {
				return nil, nil, fmt.Errorf("%s: tensor %s element %d = %d does not fit int32", f.Path(), name, i, v)
			}
			out[i] = int32(v)
		} else {
			out[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	}
	return out, info.Shape, nil
}

// openFixture builds, with train.New, a trainer of DIR/model (DIR/model-bf16
// with bf16 weights) and DIR/adapter_init sized for batch, with AdamW cfg at
// the constant rate lr; sparsity (nil: dense) runs every step sparse.
func openFixture(ctx context.Context, dev *gpu.Device, dir string, bf16 bool, batch model.Batch, cfg optim.AdamWConfig, lr float64,
	sparsity *predictor.SparsityConfig) (*train.Trainer, error) {
	modelDir, dtype := filepath.Join(dir, "model"), gpu.F32
	if bf16 {
		modelDir, dtype = filepath.Join(dir, "model-bf16"), gpu.BF16
	}
	return train.New(ctx, dev, train.Settings{
		Model:    train.ModelSource{Dir: modelDir, DType: dtype},
		Params:   train.ParamSource{AdapterDir: filepath.Join(dir, "adapter_init")},
		AdamW:    cfg,
		Schedule: optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 1, BaseRate: lr},
		Rows:     batch.Rows,
		Seq:      batch.Seq,
		Sparsity: sparsity,
		Estimate: predictor.EstimateOptions{NoCache: true},
	})
}

// openReference reads a fixture's reference.json and opens its
// reference.safetensors (the caller closes it), with the batch the reference
// ran and the AdamW settings it stepped with.
func openReference(dir string) (ref referenceJSON, tensors *safetensors.File, batch model.Batch, cfg optim.AdamWConfig, err error) {
	if err = readJSON(filepath.Join(dir, "reference.json"), &ref); err != nil {
		return
	}
	if tensors, err = safetensors.Open(filepath.Join(dir, "reference.safetensors")); err != nil {
		return
	}
	if batch, err = referenceBatch(tensors); err != nil {
		tensors.Close()
		return
	}
	cfg = optim.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: ref.Optimizer.Eps, WeightDecay: ref.Optimizer.WeightDecay}
	if len(ref.Optimizer.Betas) == 2 {
		cfg.Beta1, cfg.Beta2 = ref.Optimizer.Betas[0], ref.Optimizer.Betas[1]
	}
	return
}

// readJSON decodes a JSON file, naming it in errors.
func readJSON(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// referenceBatch reads the batch (input_ids, attention_mask, labels) of a
// fixture's reference.safetensors.
func referenceBatch(tensors *safetensors.File) (model.Batch, error) {
	ids, shape, err := readInts(tensors, "input_ids")
	if err != nil {
		return model.Batch{}, err
	}
	if len(shape) != 2 {
		return model.Batch{}, fmt.Errorf("%s: input_ids has shape %v, want [batch, seq]", tensors.Path(), shape)
	}
	mask, _, err := readInts(tensors, "attention_mask")
	if err != nil {
		return model.Batch{}, err
	}
	labels, _, err := readInts(tensors, "labels")
	if err != nil {
		return model.Batch{}, err
	}
	return model.Batch{Rows: shape[0], Seq: shape[1], InputIDs: ids, Mask: mask, Labels: labels}, nil
}

// Dense runs the dense checks of the fixture in dir on dev: with bf16, those
// of the forward pass with DIR/model-bf16's frozen weights kept as bf16.
func Dense(ctx context.Context, dev *gpu.Device, dir string, bf16 bool) ([]Check, error) {
	refPath := filepath.Join(dir, "reference.json")
	ref, tensors, batch, cfg, err := openReference(dir)
	if err != nil {
		return nil, err
	}
	defer tensors.Close()
	mask := batch.Mask
	tr, err := openFixture(ctx, dev, dir, bf16, batch, cfg, ref.Optimizer.LR, nil)
	if err != nil {
		return nil, err
	}
	defer tr.Release()
	m, adapters, ws := tr.Model, tr.Adapters, tr.WS
	T := batch.Rows * batch.Seq
	real := func(width int) func(i int) bool {
		return func(i int) bool { return mask[i/width] != 0 }
	}

	// The reference generates with the initial adapter, so this runs before training.
	gen, err := greedyCheck(ctx, m, tensors)
	if err != nil {
		return nil, err
	}
	checks := []Check{gen}
	logits, err := dev.NewTensor(gpu.F32, "logits", T, m.Config.VocabSize)
	if err != nil {
		return nil, err
	}
	defer logits.Release()
	// Step 1: the forward's activations, logits and loss, the gradients, and
	// the parameters after the update (AdamW leaves the gradients in place).
	loss, err := trainStep(ctx, tr, batch, nil, logits)
	if err != nil {
		return nil, err
	}
	scalar := func(name string, got, want float64, tol float64) Check {
		return Check{Name: name, Err: math.Abs(got-want) / math.Abs(want), Tolerance: tol}
	}
	compare := func(name string, got *gpu.Tensor, refName string, keep func(int) bool, tol float64) error {
		want, err := tensors.ReadFloat32(refName)
		if err != nil {
			return err
		}
		g, err := got.Download(ctx)
		if err != nil {
			return err
		}
		checks = append(checks, Check{Name: name, Err: relErr(g, want, keep), Tolerance: tol})
		return nil
	}
	if bf16 {
		if err := compare("logits (bf16 weights)", logits, "logits_bf16_weights", real(m.Config.VocabSize), tolActivations); err != nil {
			return nil, err
		}
		if ref.LossBF16Weights == nil {
			return nil, fmt.Errorf("%s: no loss_bf16_weights", refPath)
		}
		return append(checks, scalar("loss (bf16 weights)", loss, *ref.LossBF16Weights, tolActivations)), nil
	}
	for i := 0; i <= len(m.Layers); i++ {
		name := fmt.Sprintf("hidden_states.%d", i)
		if err := compare(name, ws.Hidden(i), name, real(m.Config.HiddenSize), tolActivations); err != nil {
			return nil, err
		}
	}
	if err := compare("logits", logits, "logits", real(m.Config.VocabSize), tolActivations); err != nil {
		return nil, err
	}
	if len(ref.Losses) < 2 {
		return nil, fmt.Errorf("%s: want two losses", refPath)
	}
	checks = append(checks, scalar("loss (step 1)", loss, ref.Losses[0], tolActivations))
	params := adapters.Params()
	// PEFT's in-memory names carry the adapter name "default".
	refName := func(prefix, name string) string {
		return prefix + strings.Replace(name, ".weight", ".default.weight", 1)
	}
	compareAll := func(label, prefix string, pick func(optim.Param) *gpu.Tensor) error {
		worst := Check{Name: label, Tolerance: tolGradients}
		for _, p := range params {
			want, err := tensors.ReadFloat32(refName(prefix, p.Name))
			if err != nil {
				return err
			}
			got, err := pick(p).Download(ctx)
			if err != nil {
				return err
			}
			if e := relErr(got, want, nil); e > worst.Err || math.IsInf(e, 0) {
				worst.Err, worst.Note = e, "worst: "+p.Name
			}
		}
		checks = append(checks, worst)
		return nil
	}
	if err := compareAll(fmt.Sprintf("LoRA gradients (%d tensors)", len(params)), "grad.", func(p optim.Param) *gpu.Tensor { return p.Grad }); err != nil {
		return nil, err
	}
	for step := 1; step <= 2; step++ {
		if step == 2 {
			if loss, err = trainStep(ctx, tr, batch, nil, nil); err != nil {
				return nil, err
			}
			checks = append(checks, scalar("loss (step 2)", loss, ref.Losses[1], tolActivations))
		}
		prefix := fmt.Sprintf("after_step%d.", step)
		if err := compareAll(fmt.Sprintf("parameters after step %d", step), prefix, func(p optim.Param) *gpu.Tensor { return p.Value }); err != nil {
			return nil, err
		}
	}
	return checks, nil
}

// trainStep runs one training step of tr on batch and returns its loss; with
// logits non-nil it also records the logits of the step's forward pass into
// it.
func trainStep(ctx context.Context, tr *train.Trainer, batch model.Batch, sel model.ChannelSelector, logits *gpu.Tensor) (float64, error) {
	if err := tr.Step([]model.Batch{batch}, sel); err != nil {
		return 0, err
	}
	stats, err := tr.ReadStats(ctx)
	if err != nil {
		return 0, err
	}
	if logits != nil {
		rec := tr.Model.Dev.NewRecorder()
		defer rec.Release()
		if err := tr.Model.Logits(rec, tr.WS, logits); err != nil {
			return 0, err
		}
		if err := rec.Submit(); err != nil {
			return 0, err
		}
	}
	return stats.Loss, nil
}

// greedyCheck regenerates the reference's greedy continuation.
func greedyCheck(ctx context.Context, m *model.Model, tensors *safetensors.File) (Check, error) {
	prompt, _, err := readInts(tensors, "generate_prompt")
	if err != nil {
		return Check{}, err
	}
	want, _, err := readInts(tensors, "generate_greedy")
	if err != nil {
		return Check{}, err
	}
	got, err := m.Generate(ctx, prompt, len(want)-len(prompt), model.Greedy())
	if err != nil {
		return Check{}, err
	}
	c := Check{Name: fmt.Sprintf("greedy generation (%d tokens)", len(want)-len(prompt)), Tolerance: 0}
	if !slices.Equal(got, want) {
		c.Err = 1
		c.Note = fmt.Sprintf("got %v, want %v", got[len(prompt):], want[len(prompt):])
	}
	return c, nil
}
