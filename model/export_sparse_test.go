package model

import "github.com/sparselora/sparselora/gpu"

// LayerValues is layer i's v_proj output (bias and adapter included) from the
// last forward, for the external tests of the sparse path.
func (w *Workspace) LayerValues(i int) *gpu.Tensor { return w.layers[i].v }
