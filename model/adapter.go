package model

import "github.com/sparselora/sparselora/gpu"

// Projection names one of the seven linear layers of a decoder layer, with the
// PEFT module name as its string.
type Projection int

// The projections, in the order PEFT lists target modules.
const (
	ProjQ Projection = iota
	ProjK
	ProjV
	ProjO
	ProjGate
	ProjUp
	ProjDown
)

// Projections lists every projection.
var Projections = []Projection{ProjQ, ProjK, ProjV, ProjO, ProjGate, ProjUp, ProjDown}

var projectionNames = [...]string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

func (p Projection) String() string { return projectionNames[p] }

// Module is the HF module path under a layer: "self_attn" or "mlp".
func (p Projection) Module() string {
	if p <= ProjO {
		return "self_attn"
	}
	return "mlp"
}

// Adapter is a trainable addition to a frozen projection y = x W^T (+ b), such
// as LoRA. The model calls it on every real token, after the base projection,
// and in backward before the base branch's input gradient. x is [tokens, in],
// y and dy are [tokens, out], dx is [tokens, in].
type Adapter interface {
	// Forward adds the adapter's output to y and keeps what Backward needs.
	Forward(rec *gpu.Recorder, x, y *gpu.Tensor, tokens int) error
	// Backward accumulates the adapter's parameter gradients from x and dy, and
	// adds its contribution to the input gradient dx.
	Backward(rec *gpu.Recorder, x, dy, dx *gpu.Tensor, tokens int) error
}
