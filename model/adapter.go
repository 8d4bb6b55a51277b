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
// y and dy are [tokens, out], dx is [tokens, in]; rows names the token rows to
// compute (an index list of the real tokens, so padding costs nothing, or the
// first Count rows), and the other rows are left as they are. An adapter keeps
// no state of a pass: xa ([tokens, Rank()]) belongs to the workspace of the
// pass, so passes in other workspaces (evaluation, generation) leave a
// training pass intact.
type Adapter interface {
	// Rank is the width of the intermediate xa.
	Rank() int
	// Forward adds the adapter's output to y and writes into xa what Backward
	// needs.
	Forward(rec *gpu.Recorder, x, y, xa *gpu.Tensor, rows RowSet) error
	// Backward accumulates the adapter's parameter gradients from x, xa (from
	// the Forward of the same x) and dy, and adds its contribution to the input
	// gradient dx; dxa ([tokens, Rank()]) is scratch.
	Backward(rec *gpu.Recorder, x, xa, dy, dx, dxa *gpu.Tensor, rows RowSet) error
}
