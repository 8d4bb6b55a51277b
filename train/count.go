package train

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
)

// RecordedFLOPs is the matmul work one recorded forward and backward issues
// (CountStep):
// per decoder layer, and outside the layers (embedding, final norm, LM head).
type RecordedFLOPs struct {
	Layers []float64 `json:"layers"`
	Other  float64   `json:"other"`
	Total  float64   `json:"total"`
	// Profile is the GPU time of each kind of kernel (empty without
	// timestamp queries).
	Profile []KernelTime `json:"profile,omitempty"`
}

// KernelTime is the GPU time and counted work of one kind of kernel in a step.
type KernelTime struct {
	Kind       string  `json:"kind"`
	Dispatches int     `json:"dispatches"`
	MS         float64 `json:"ms"`
	FLOPs      float64 `json:"flops"`
}

// attentionFLOPsPerPair is the work of an attention pass per causal (query,
// key) pair and head dimension: 4, 6 and 8 for the forward, dq and dk/dv
// passes, 0 for other kinds.
func attentionFLOPsPerPair(k gpu.Kind) float64 {
	switch k {
	case gpu.KindAttentionForward:
		return 4
	case gpu.KindAttentionQueryGrad:
		return 6
	case gpu.KindAttentionKeyValueGrad:
		return 8
	}
	return 0
}

// CountStep records one forward and backward of b (dense when sel is nil)
// outside any optimizer step (the gradients accumulate into the trainable
// parameters' buffers: zero them before the next step), logging every dispatch with the model part it belongs to, runs it, and
// counts its work: 2 m n k per GEMM, with the counts of its index lists read
// back from the GPU (the real sizes of the gathered GEMMs, whose grids the GPU
// sized), and for the attention kernels the causal pairs of the real tokens of
// each sequence and query head in the grid (the kernels skip masked pairs):
// 4, 6 and 8 head_dim FLOPs per pair for the forward, dq and dk/dv passes.
func CountStep(ctx context.Context, m *model.Model, ws *model.Workspace, b model.Batch, sel model.ChannelSelector) (RecordedFLOPs, error) {
	if err := ws.Load(m, b); err != nil {
		return RecordedFLOPs{}, err
	}
	type logged struct {
		part int
		d    gpu.Dispatch
	}
	var work []logged
	part := -1
	ws.Trace = func(layer int) { part = layer }
	defer func() { ws.Trace = nil }()
	rec := m.Dev.NewRecorder()
	defer rec.Release()
	// With timestamps, every dispatch gets a pass of its own, so pass i times
	// dispatch i.
	rec.Timed = m.Dev.HasTimestamps
	rec.Log = func(d gpu.Dispatch) {
		work = append(work, logged{part, d})
		if rec.Timed {
			rec.EndPass()
		}
	}
	if err := m.Forward(rec, ws, sel); err != nil {
		return RecordedFLOPs{}, err
	}
	if err := m.Backward(rec, ws); err != nil {
		return RecordedFLOPs{}, err
	}
	if err := rec.Submit(); err != nil {
		return RecordedFLOPs{}, err
	}
	if err := m.Dev.Sync(ctx); err != nil {
		return RecordedFLOPs{}, err
	}

	type listKey struct {
		buf    *gpu.Buffer
		offset int
	}
	counts := map[listKey]int{}
	count := func(l *gpu.IndexList, bound int) (int, error) {
		if l == nil {
			return bound, nil
		}
		key := listKey{l.Buf, l.Offset}
		n, ok := counts[key]
		if !ok {
			raw, err := l.Buf.Read(ctx, uint64(4*l.Offset), 4)
			if err != nil {
				return 0, err
			}
			n = int(binary.LittleEndian.Uint32(raw))
			counts[key] = n
		}
		return min(n, bound), nil
	}
	// Causal pairs of one sequence and head, summed over the batch's rows.
	var pairs float64
	for r := range b.Rows {
		var real float64
		for _, mask := range b.Mask[r*b.Seq : (r+1)*b.Seq] {
			if mask != 0 {
				real++
			}
		}
		pairs += real * (real + 1) / 2
	}
	var times []time.Duration
	if rec.Timed {
		var err error
		if times, err = rec.PassTimes(ctx); err != nil {
			return RecordedFLOPs{}, err
		}
		if len(times) != len(work) {
			return RecordedFLOPs{}, fmt.Errorf("%d timed passes for %d dispatches", len(times), len(work))
		}
	}
	kinds := map[gpu.Kind]*KernelTime{}
	c := m.Config
	out := RecordedFLOPs{Layers: make([]float64, len(m.Layers))}
	for i, w := range work {
		var flops float64
		switch {
		case w.d.Kind.IsGemm():
			g := w.d.Gemm
			mm, err := count(g.Rows, g.M)
			if err != nil {
				return out, err
			}
			nn, err := count(g.Cols, g.N)
			if err != nil {
				return out, err
			}
			kk, err := count(g.Inner, g.K)
			if err != nil {
				return out, err
			}
			flops = gpu.GemmFLOPs(mm, nn, kk)
		case attentionFLOPsPerPair(w.d.Kind) != 0:
			if w.d.Indirect != nil {
				return out, fmt.Errorf("%s dispatch %s: an indirect grid", w.d.Kind, w.d.Kernel)
			}
			heads := float64(w.d.Groups[1]) // query heads, or kv heads for dk/dv
			if w.d.Kind == gpu.KindAttentionKeyValueGrad {
				heads *= float64(c.NumAttentionHeads / c.NumKeyValueHeads)
			}
			flops = attentionFLOPsPerPair(w.d.Kind) * float64(c.HeadDim) * heads * pairs * float64(w.d.Groups[2]) / float64(b.Rows)
		}
		if w.part >= 0 {
			out.Layers[w.part] += flops
		} else {
			out.Other += flops
		}
		out.Total += flops
		if times != nil {
			k := kinds[w.d.Kind]
			if k == nil {
				k = &KernelTime{Kind: w.d.Kind.String()}
				kinds[w.d.Kind] = k
			}
			k.Dispatches++
			k.MS += times[i].Seconds() * 1e3
			k.FLOPs += flops
		}
	}
	for _, kind := range slices.Sorted(maps.Keys(kinds)) {
		out.Profile = append(out.Profile, *kinds[kind])
	}
	return out, nil
}
