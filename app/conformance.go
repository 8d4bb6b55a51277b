package app

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
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

// check is one row of the conformance table.
type check struct {
	name      string
	err       float64
	tolerance float64
	note      string
}

func (c check) ok() bool { return c.err <= c.tolerance }

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
	var checks []check
	var err error
	switch {
	case *sparse && *bf16:
		fmt.Fprintln(stderr, "conformance: --sparse and --bf16 are separate checks; pick one")
		return errUsage
	case *sparse:
		checks, err = sparseConformance(ctx, &df, dir)
	default:
		checks, err = conformance(ctx, &df, dir, *bf16)
	}
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tREL. ERROR\tTOLERANCE\tRESULT")
	failed := 0
	for _, c := range checks {
		result := "ok"
		if !c.ok() {
			result = "FAIL"
			failed++
		}
		if c.note != "" {
			result += " (" + c.note + ")"
		}
		fmt.Fprintf(tw, "%s\t%.3g\t%.0e\t%s\n", c.name, c.err, c.tolerance, result)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%d of %d checks over tolerance for %s", failed, len(checks), dir)
	}
	fmt.Fprintf(stdout, "all %d checks pass\n", len(checks))
	return nil
}

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

// fixture is a fixture's model with its initial PEFT adapter attached.
type fixture struct {
	dev      *gpu.Device
	m        *model.Model
	adapters *lora.Set
	close    func()
}

// openFixture loads DIR/model (DIR/model-bf16 with bf16 weights) and
// DIR/adapter_init, sized for batch.
func openFixture(df *deviceFlags, dir string, bf16 bool, batch model.Batch) (*fixture, error) {
	dev, closeDev, err := df.open()
	if err != nil {
		return nil, err
	}
	modelDir, dtype := filepath.Join(dir, "model"), gpu.F32
	if bf16 {
		modelDir, dtype = filepath.Join(dir, "model-bf16"), gpu.BF16
	}
	m, err := model.Load(dev, modelDir, dtype)
	if err != nil {
		closeDev()
		return nil, err
	}
	adapters, err := lora.Load(m, filepath.Join(dir, "adapter_init"))
	if err != nil {
		m.Release()
		closeDev()
		return nil, err
	}
	adapters.Attach(m)
	return &fixture{dev: dev, m: m, adapters: adapters, close: func() {
		adapters.Release()
		m.Release()
		closeDev()
	}}, nil
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

func conformance(ctx context.Context, df *deviceFlags, dir string, bf16 bool) ([]check, error) {
	var ref referenceJSON
	refPath := filepath.Join(dir, "reference.json")
	if err := readJSON(refPath, &ref); err != nil {
		return nil, err
	}
	tensors, err := safetensors.Open(filepath.Join(dir, "reference.safetensors"))
	if err != nil {
		return nil, err
	}
	defer tensors.Close()
	batch, err := referenceBatch(tensors)
	if err != nil {
		return nil, err
	}
	mask := batch.Mask

	fx, err := openFixture(df, dir, bf16, batch)
	if err != nil {
		return nil, err
	}
	defer fx.close()
	dev, m, adapters := fx.dev, fx.m, fx.adapters
	T := batch.Rows * batch.Seq
	ws, err := m.NewWorkspace(batch.Rows, batch.Seq)
	if err != nil {
		return nil, err
	}
	defer ws.Release()
	real := func(width int) func(i int) bool {
		return func(i int) bool { return mask[i/width] != 0 }
	}

	// The reference generates with the initial adapter, so this runs before training.
	gen, err := greedyCheck(ctx, m, tensors)
	if err != nil {
		return nil, err
	}
	checks := []check{gen}
	logits, err := dev.NewTensor(gpu.F32, "logits", T, m.Config.VocabSize)
	if err != nil {
		return nil, err
	}
	defer logits.Release()
	cfg := optim.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: ref.Optimizer.Eps, WeightDecay: ref.Optimizer.WeightDecay}
	if len(ref.Optimizer.Betas) == 2 {
		cfg.Beta1, cfg.Beta2 = ref.Optimizer.Betas[0], ref.Optimizer.Betas[1]
	}
	tr, err := newConformanceTrainer(m, adapters, ws, cfg)
	if err != nil {
		return nil, err
	}
	defer tr.release()
	// Step 1: the forward's activations, logits and loss, the gradients, and
	// the parameters after the update (AdamW leaves the gradients in place).
	loss, err := tr.step(ctx, batch, ref.Optimizer.LR, nil, logits)
	if err != nil {
		return nil, err
	}
	scalar := func(name string, got, want float64, tol float64) check {
		return check{name: name, err: math.Abs(got-want) / math.Abs(want), tolerance: tol}
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
		checks = append(checks, check{name: name, err: relErr(g, want, keep), tolerance: tol})
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
		worst := check{name: label, tolerance: tolGradients}
		for _, p := range params {
			want, err := tensors.ReadFloat32(refName(prefix, p.Name))
			if err != nil {
				return err
			}
			got, err := pick(p).Download(ctx)
			if err != nil {
				return err
			}
			if e := relErr(got, want, nil); e > worst.err || math.IsInf(e, 0) {
				worst.err, worst.note = e, "worst: "+p.Name
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
			if loss, err = tr.step(ctx, batch, ref.Optimizer.LR, nil, nil); err != nil {
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

// conformanceTrainer runs the library's training step on a fixture.
type conformanceTrainer struct {
	opt *optim.Optimizer
	tr  *train.Trainer
	m   *model.Model
	ws  *model.Workspace
}

func newConformanceTrainer(m *model.Model, adapters *lora.Set, ws *model.Workspace, cfg optim.AdamWConfig) (*conformanceTrainer, error) {
	opt, err := optim.NewOptimizer(m.Dev, adapters.Params(), cfg)
	if err != nil {
		return nil, err
	}
	tr, err := train.NewTrainer(m, adapters, opt, ws)
	if err != nil {
		opt.Release()
		return nil, err
	}
	return &conformanceTrainer{opt: opt, tr: tr, m: m, ws: ws}, nil
}

func (c *conformanceTrainer) release() {
	c.tr.Release()
	c.opt.Release()
}

// step runs one training step on batch and returns its loss; with logits
// non-nil it also records the logits of the step's forward pass into it.
func (c *conformanceTrainer) step(ctx context.Context, batch model.Batch, lr float64, sel model.ChannelSelector, logits *gpu.Tensor) (float64, error) {
	if err := c.tr.Step([]model.Batch{batch}, lr, sel); err != nil {
		return 0, err
	}
	stats, err := c.tr.ReadStats(ctx)
	if err != nil {
		return 0, err
	}
	if logits != nil {
		rec := c.m.Dev.NewRecorder()
		defer rec.Release()
		if err := c.m.Logits(rec, c.ws, logits); err != nil {
			return 0, err
		}
		if err := rec.Submit(); err != nil {
			return 0, err
		}
	}
	return stats.Loss, nil
}

// oneStep runs a single training step with its own optimizer (see
// conformanceTrainer.step).
func oneStep(ctx context.Context, m *model.Model, adapters *lora.Set, ws *model.Workspace, batch model.Batch,
	cfg optim.AdamWConfig, lr float64, sel model.ChannelSelector, logits *gpu.Tensor) (float64, error) {
	tr, err := newConformanceTrainer(m, adapters, ws, cfg)
	if err != nil {
		return 0, err
	}
	defer tr.release()
	return tr.step(ctx, batch, lr, sel, logits)
}

// greedyCheck regenerates the reference's greedy continuation.
func greedyCheck(ctx context.Context, m *model.Model, tensors *safetensors.File) (check, error) {
	prompt, _, err := readInts(tensors, "generate_prompt")
	if err != nil {
		return check{}, err
	}
	want, _, err := readInts(tensors, "generate_greedy")
	if err != nil {
		return check{}, err
	}
	got, err := m.Generate(ctx, prompt, len(want)-len(prompt), model.Greedy())
	if err != nil {
		return check{}, err
	}
	c := check{name: fmt.Sprintf("greedy generation (%d tokens)", len(want)-len(prompt)), tolerance: 0}
	if !slices.Equal(got, want) {
		c.err = 1
		c.note = fmt.Sprintf("got %v, want %v", got[len(prompt):], want[len(prompt):])
	}
	return c, nil
}
