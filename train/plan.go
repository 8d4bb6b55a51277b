package train

import (
	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model"
)

// MemorySettings are the run settings the GPU memory of a training step
// depends on.
type MemorySettings struct {
	// Rows x Seq tokens per micro-batch; GradAccum micro-batches per step.
	Rows, Seq, GradAccum int
	// WeightDType stores the frozen matrices (F32 or BF16); Quantize, when
	// its Bits are set, stores them in MLX's affine format instead.
	WeightDType gpu.DType
	Quantize    model.Quantization
	// ScaleDType is the size of a quantized weight's scales and biases: the
	// checkpoint's float type, whatever WeightDType is (BF16 for bf16 and f16
	// checkpoints, F32 for f32 ones; model.CheckpointScaleDType).
	ScaleDType gpu.DType
	// Full trains every weight; otherwise LoRA of Rank on Targets.
	Full    bool
	Rank    int
	Targets []model.Projection
	// GradCheckpoint recomputes each layer's forward in backward.
	GradCheckpoint bool
	// CheckpointEvery keeps every N-th layer's input only, with
	// GradCheckpoint (0 or 1: every layer's).
	CheckpointEvery int
	// SVDRank and the counts of layers with sparse attention and sparse MLPs
	// size the SparseLoRA predictor (0 layers: a dense run).
	SVDRank                      int
	SparseAttnLayers, SparseMLPs int
	// EvalLoss adds the loss evaluation's own workspace; EvalGenerate, when
	// positive, the generator of exact-match evaluation (its positions).
	EvalLoss     bool
	EvalGenerate int
	// Limits are the device's (the LM head's chunk depends on the storage
	// binding limit); zero takes WebGPU's defaults.
	Limits gpu.Limits
}

// MemoryPart is one part of the plan.
type MemoryPart struct {
	Name  string `json:"name"`
	Bytes uint64 `json:"bytes"`
}

// MemoryPlan is the predicted peak of the GPU memory a training run holds:
// every buffer the step's objects allocate, by part.
type MemoryPlan struct {
	Parts     []MemoryPart `json:"parts"`
	PeakBytes uint64       `json:"peak_bytes"`
	// HostBytes is what the run keeps in host memory instead: the embedding
	// table of a LoRA run with an untied head (not part of the peak).
	HostBytes uint64 `json:"host_bytes"`
}

// defaultLimits are WebGPU's default limits that the plan depends on.
var defaultLimits = gpu.Limits{MaxBufferSize: 256 << 20, MaxStorageBufferBindingSize: 128 << 20, MinStorageBufferOffsetAlignment: 256}

// Dispatches a step records per decoder layer and outside them, with one
// 256-byte uniform slot each: the recorder's kernel-parameter chunks.
const (
	dispatchesPerLayer = 160
	dispatchesOutside  = 64
	uniformSlotBytes   = 256
	uniformChunkBytes  = 64 << 10
)

// PlanMemory predicts the peak GPU bytes of a training run of cfg with s.
func PlanMemory(cfg *model.Config, s MemorySettings) MemoryPlan {
	lim := s.Limits
	if lim.MaxStorageBufferBindingSize == 0 {
		lim = defaultLimits
	}
	var p MemoryPlan
	add := func(name string, bytes uint64) {
		p.Parts = append(p.Parts, MemoryPart{name, bytes})
		p.PeakBytes += bytes
	}
	dtype := s.WeightDType
	if dtype == 0 {
		dtype = gpu.F32
	}
	// LoRA runs keep the embedding table in host memory when the head is
	// untied (train.New); full training trains it on the GPU.
	hostEmbedding := !s.Full
	onGPU := cfg.WeightBytes(dtype, s.ScaleDType, s.Quantize, hostEmbedding)
	add("frozen weights", onGPU)
	p.HostBytes = cfg.WeightBytes(dtype, s.ScaleDType, s.Quantize, false) - onGPU
	L := uint64(cfg.NumHiddenLayers)
	var ranks [7]int
	if s.Full {
		// A gradient and two AdamW moments per weight (all f32).
		params := uint64(cfg.ParameterCount())
		add("gradients + AdamW moments", 3*4*params+adamwReductionBytes(params))
	} else {
		var params uint64
		for _, t := range s.Targets {
			in, out := cfg.ProjectionShape(t)
			params += uint64(s.Rank) * uint64(in+out)
			ranks[t] = s.Rank
		}
		params *= L
		// Value, gradient and two AdamW moments.
		add("LoRA parameters + gradients + AdamW moments", 4*4*params+adamwReductionBytes(params))
	}
	ws := cfg.PlanWorkspace(s.Rows, s.Seq, ranks, s.workspaceOptions(), lim)
	add("saved activations", ws.Saved)
	if s.GradCheckpoint {
		add("recompute scratch", ws.Recompute)
	}
	add("gradient scratch", ws.Gradients)
	add("LM-head chunk", ws.LMHead)
	add("attention scratch", ws.Attention)
	if s.SparseAttnLayers+s.SparseMLPs > 0 {
		add("SVD factors + selection", svdBytes(cfg, s))
	}
	// One recorder holds every micro-batch's forward and backward of a step,
	// in one submission, or one per micro-batch when the embedding table is
	// in host memory (Workspace.UseStaged).
	perSubmission := uint64(max(s.GradAccum, 1))
	if cfg.EmbeddingOnHost(hostEmbedding) {
		perSubmission = 1
	}
	dispatches := (dispatchesOutside + dispatchesPerLayer*L) * perSubmission
	chunks := (dispatches*uniformSlotBytes + uniformChunkBytes - 1) / uniformChunkBytes
	add("staging", model.StagingBytes(s.Rows, s.Seq, max(s.GradAccum, 1))+ws.Inputs+chunks*uniformChunkBytes)
	if s.EvalLoss {
		// evaluate.NewEvaluator: a forward-only workspace.
		ev := cfg.PlanWorkspace(s.Rows, s.Seq, ranks, model.WorkspaceOptions{ForwardOnly: true}, lim)
		add("evaluation workspace", ev.Total())
	}
	if s.EvalGenerate > 0 {
		maxRank := 0
		for _, r := range ranks {
			maxRank = max(maxRank, r)
		}
		// infer.NewSession: a generator of the default chunk.
		add("generation (exact-match evaluation)", cfg.GeneratorBytes(s.EvalGenerate, 0, maxRank, hostEmbedding))
	}
	return p
}

// workspaceOptions are the step workspace's options of a run with s.
func (s MemorySettings) workspaceOptions() model.WorkspaceOptions {
	return model.WorkspaceOptions{GradCheckpoint: s.GradCheckpoint, CheckpointEvery: s.CheckpointEvery}
}

// adamwReductionBytes is the gradient-norm reduction's scratch: about one
// partial sum per 256 parameters.
func adamwReductionBytes(params uint64) uint64 { return 4*(params/256+1) + 64 }

// svdBytes are the predictor's rank-r factors (A [in, r] and B [r, out] of
// q, k, v on sparse-attention layers and gate, up on sparse-MLP layers) and
// the selection's per-layer scores and channel lists and shared scratch.
func svdBytes(cfg *model.Config, s MemorySettings) uint64 {
	r := uint64(max(s.SVDRank, 1))
	H, I := uint64(cfg.HiddenSize), uint64(cfg.IntermediateSize)
	q := uint64(cfg.NumAttentionHeads * cfg.HeadDim)
	kv := uint64(cfg.NumKeyValueHeads * cfg.HeadDim)
	attn := 4*r*(3*H+q+2*kv) + 4*(2*kv+2*q+2*kv+4)
	mlp := 4*r*(2*H+2*I) + 4*(I+1+I)
	scratch := 4 * (uint64(s.Rows)*H + 3*r*uint64(s.Rows) + max(I, q) + 16*(q+2*kv))
	return uint64(s.SparseAttnLayers)*attn + uint64(s.SparseMLPs)*mlp + scratch
}

// Part returns the bytes of the named part (0 when absent).
func (p MemoryPlan) Part(name string) uint64 {
	for _, part := range p.Parts {
		if part.Name == name {
			return part.Bytes
		}
	}
	return 0
}
