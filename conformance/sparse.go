package conformance

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
	"github.com/sparselora/sparselora/predictor"
	"github.com/sparselora/sparselora/train"
)

// sparseReferenceJSON is DIR/sparse_reference.json.
type sparseReferenceJSON struct {
	Rank     int                `json:"rank"`
	Sparsity map[string]float64 `json:"sparsity"`
	Loss     float64            `json:"loss"`
}

// parseSparsityMap turns {"layers.N.mlp": s, "layers.N.self_attn": s} into
// per-layer sparsities.
func parseSparsityMap(source string, m map[string]float64) (map[int]predictor.LayerSparsity, error) {
	out := map[int]predictor.LayerSparsity{}
	for key, s := range m {
		parts := strings.Split(key, ".")
		layer, err := strconv.Atoi(parts[min(1, len(parts)-1)])
		if len(parts) != 3 || parts[0] != "layers" || err != nil || layer < 0 || s < 0 || s >= 1 {
			return nil, fmt.Errorf("%s: sparsity key %q = %g: want layers.N.mlp or layers.N.self_attn with 0 <= s < 1", source, key, s)
		}
		ls := out[layer]
		switch parts[2] {
		case "mlp":
			ls.MLP = s
		case "self_attn":
			ls.Attention = s
		default:
			return nil, fmt.Errorf("%s: sparsity key %q: want mlp or self_attn", source, key)
		}
		out[layer] = ls
	}
	return out, nil
}

// recordingSelector passes selections through and remembers them per layer so
// the conformance run can compare them with the reference.
type recordingSelector struct {
	*predictor.Selector
	attention map[int]model.AttentionChannels
	mlp       map[int]*gpu.IndexList
}

func (r *recordingSelector) Attention(rec *gpu.Recorder, layer int, x *gpu.Tensor, t *model.TokenSets) (model.AttentionChannels, error) {
	a, err := r.Selector.Attention(rec, layer, x, t)
	r.attention[layer] = a
	return a, err
}

func (r *recordingSelector) MLP(rec *gpu.Recorder, layer int, x *gpu.Tensor, t *model.TokenSets) (*gpu.IndexList, error) {
	l, err := r.Selector.MLP(rec, layer, x, t)
	r.mlp[layer] = l
	return l, err
}

func downloadList(ctx context.Context, l *gpu.IndexList) ([]int32, error) {
	raw, err := l.Buf.Read(ctx, uint64(4*l.Offset), 4)
	if err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(raw)
	if n == 0 {
		return []int32{}, nil
	}
	raw, err = l.Buf.Read(ctx, uint64(4*(l.Offset+1)), uint64(4*n))
	if err != nil {
		return nil, err
	}
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out, nil
}

// Sparse runs one SparseLoRA forward and backward with the sparsity
// and rank of DIR/sparse_reference.json and compares factors, scores, selected
// channels, token roles, logits, loss and LoRA gradients.
func Sparse(ctx context.Context, dev *gpu.Device, dir string) ([]Check, error) {
	var ref sparseReferenceJSON
	refPath := filepath.Join(dir, "sparse_reference.json")
	if err := readJSON(refPath, &ref); err != nil {
		return nil, err
	}
	sparsity, err := parseSparsityMap(refPath, ref.Sparsity)
	if err != nil {
		return nil, err
	}
	sparse, err := safetensors.Open(filepath.Join(dir, "sparse_reference.safetensors"))
	if err != nil {
		return nil, err
	}
	defer sparse.Close()
	reference, err := safetensors.Open(filepath.Join(dir, "reference.safetensors"))
	if err != nil {
		return nil, err
	}
	batch, err := referenceBatch(reference)
	reference.Close()
	if err != nil {
		return nil, err
	}
	layers := slices.Sorted(maps.Keys(sparsity))
	table := &predictor.SparsityConfig{Source: refPath, Layers: sparsity, Rank: ref.Rank, SkipOutputTokens: true}
	// The training step with learning rate 0 leaves the parameters as they
	// are and the step's gradients in place for the comparison.
	tr, err := train.New(ctx, dev, train.Settings{
		Model:    train.ModelSource{Dir: filepath.Join(dir, "model"), DType: gpu.F32},
		Params:   train.ParamSource{AdapterDir: filepath.Join(dir, "adapter_init")},
		AdamW:    optim.AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8},
		Schedule: optim.Schedule{Kind: optim.ScheduleConstant, TotalSteps: 1},
		Rows:     batch.Rows,
		Seq:      batch.Seq,
		Sparsity: table,
		Estimate: predictor.EstimateOptions{NoCache: true},
		Loaded: func(t *train.Trainer) error {
			if n := len(layers); n > 0 && layers[n-1] >= len(t.Model.Layers) {
				return fmt.Errorf("%s: layer %d, but the model has %d", refPath, layers[n-1], len(t.Model.Layers))
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	defer tr.Release()
	m, adapters, ws, est, sel := tr.Model, tr.Adapters, tr.WS, tr.Estimator, tr.Selector
	if sel == nil {
		return nil, fmt.Errorf("%s: no sparse layer", refPath)
	}
	T := batch.Rows * batch.Seq
	targets := predictor.SparseTargets(table)
	recSel := &recordingSelector{Selector: sel, attention: map[int]model.AttentionChannels{}, mlp: map[int]*gpu.IndexList{}}
	logits, err := dev.NewTensor(gpu.F32, "logits", T, m.Config.VocabSize)
	if err != nil {
		return nil, err
	}
	defer logits.Release()
	loss, err := trainStep(ctx, tr, batch, recSel, logits)
	if err != nil {
		return nil, err
	}

	var checks []Check
	// Token roles.
	for _, role := range []struct {
		name string
		list gpu.IndexList
	}{{"context_mask", ws.Tokens.Context}, {"scored_mask", ws.Tokens.Scored}} {
		want, _, err := readInts(sparse, role.name)
		if err != nil {
			return nil, err
		}
		got, err := downloadList(ctx, &role.list)
		if err != nil {
			return nil, err
		}
		mask := make([]int32, T)
		for _, i := range got {
			mask[i] = 1
		}
		c := Check{Name: "tokens: " + role.name}
		if !slices.Equal(mask, want) {
			c.Err, c.Note = 1, "differs"
		}
		checks = append(checks, c)
	}
	// Factors (compare A B: factors are unique only up to sign), scores, selections.
	worstFactor := Check{Name: fmt.Sprintf("SVD factors A·B, rank %d (%d matrices)", ref.Rank, len(targets)), Tolerance: tolActivations}
	for _, t := range targets {
		f, _ := est.Factors(t.Layer, t.Proj)
		got, err := factorProduct(ctx, f)
		if err != nil {
			return nil, err
		}
		a, errA := sparse.ReadFloat32("svd." + t.Name() + ".A")
		b, errB := sparse.ReadFloat32("svd." + t.Name() + ".B")
		if errA != nil || errB != nil {
			return nil, fmt.Errorf("%s: %w", sparse.Path(), errorsJoin(errA, errB))
		}
		want := hostProduct(a, b, f.Rank)
		if e := relErr(got, want, nil); e > worstFactor.Err {
			worstFactor.Err, worstFactor.Note = e, "worst: "+t.Name()
		}
	}
	checks = append(checks, worstFactor)
	for _, layer := range layers {
		mlpScores, qkScores, vScores := sel.Scores(layer)
		for _, s := range []struct {
			name string
			t    *gpu.Tensor
		}{{"mlp", mlpScores}, {"self_attn.qk", qkScores}, {"self_attn.v", vScores}} {
			if s.t == nil {
				continue
			}
			name := fmt.Sprintf("scores.layers.%d.%s", layer, s.name)
			want, err := sparse.ReadFloat32(name)
			if err != nil {
				return nil, err
			}
			got, err := s.t.Download(ctx)
			if err != nil {
				return nil, err
			}
			checks = append(checks, Check{Name: name, Err: relErr(got, want, nil), Tolerance: tolActivations})
		}
		lists := map[string]*gpu.IndexList{"mlp": recSel.mlp[layer]}
		if a := recSel.attention[layer]; !a.Dense() {
			lists["self_attn.q"], lists["self_attn.k"], lists["self_attn.v"], lists["self_attn.o"] = a.Q, a.K, a.V, a.O
		}
		for _, part := range []string{"mlp", "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"} {
			name := fmt.Sprintf("select.layers.%d.%s", layer, part)
			if _, err := sparse.Info(name); err != nil {
				continue // the reference keeps this part dense
			}
			want, _, err := readInts(sparse, name)
			if err != nil {
				return nil, err
			}
			c := Check{Name: name}
			l := lists[part]
			if l == nil {
				c.Err, c.Note = 1, "ran dense"
			} else if got, err := downloadList(ctx, l); err != nil {
				return nil, err
			} else if !slices.Equal(got, want) {
				c.Err, c.Note = 1, fmt.Sprintf("%d of %d channels differ", countDiff(got, want), len(want))
			}
			checks = append(checks, c)
		}
	}
	// Logits, loss and gradients of the sparse step.
	mask := batch.Mask
	wantLogits, err := sparse.ReadFloat32("logits")
	if err != nil {
		return nil, err
	}
	gotLogits, err := logits.Download(ctx)
	if err != nil {
		return nil, err
	}
	V := m.Config.VocabSize
	checks = append(checks, Check{Name: "logits (sparse)", Err: relErr(gotLogits, wantLogits, func(i int) bool { return mask[i/V] != 0 }), Tolerance: tolActivations})
	checks = append(checks, Check{Name: "loss (sparse)", Err: math.Abs(loss-ref.Loss) / math.Abs(ref.Loss), Tolerance: tolActivations})
	worst := Check{Name: fmt.Sprintf("LoRA gradients, sparse (%d tensors)", len(adapters.Params())), Tolerance: tolGradients}
	for _, p := range adapters.Params() {
		want, err := sparse.ReadFloat32("grad." + strings.Replace(p.Name, ".weight", ".default.weight", 1))
		if err != nil {
			return nil, err
		}
		got, err := p.Grad.Download(ctx)
		if err != nil {
			return nil, err
		}
		if e := relErr(got, want, nil); e > worst.Err || math.IsInf(e, 0) {
			worst.Err, worst.Note = e, "worst: "+p.Name
		}
	}
	return append(checks, worst), nil
}

func countDiff(a, b []int32) int {
	n := max(len(a), len(b)) - min(len(a), len(b))
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// factorProduct downloads A [in, r] and B [r, out] and multiplies them.
func factorProduct(ctx context.Context, f *predictor.Factors) ([]float32, error) {
	a, err := f.A.Download(ctx)
	if err != nil {
		return nil, err
	}
	b, err := f.B.Download(ctx)
	if err != nil {
		return nil, err
	}
	return hostProduct(a, b, f.Rank), nil
}

func hostProduct(a, b []float32, rank int) []float32 {
	in, out := len(a)/rank, len(b)/rank
	p := make([]float32, in*out)
	for i := range in {
		for j := range out {
			var s float64
			for k := range rank {
				s += float64(a[i*rank+k]) * float64(b[k*out+j])
			}
			p[i*out+j] = float32(s)
		}
	}
	return p
}
