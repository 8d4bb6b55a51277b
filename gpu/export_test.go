package gpu

// Exports of unexported internals for the external tests (package gpu_test)
// only: the elementwise kernels with an explicit per-dimension grid limit, so
// the tests can force the 2-D grid path at sizes they can afford.

var (
	AxpbyWithGridLimit     = axpby
	ScaleWithGridLimit     = scale
	RowReduceWithGridLimit = rowReduce
)

// The row reductions rowReduce takes.
const (
	OpRowSum        = opRowSum
	OpRowSumSquares = opRowSumSquares
)

// PendingCalls counts the asynchronous calls, abandoned by cancelled waits, whose
// state the instance still holds because their callbacks have not fired.
func PendingCalls(in *Instance) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.orphans)
}

// CompileWithPrelude compiles src as the kernel file `file` the way Device.Kernel
// compiles a file of package shaders: the device's enable directives, the
// consts, then the prelude, then src, with the sections its features select.
func CompileWithPrelude(d *Device, file, src string, consts ...Const) (*Kernel, error) {
	return d.compileWithPrelude(file, file, src, consts)
}

// FusedMultiplyAdd32 is the host's f32 fused multiply-add of the dequantized
// weights.
var FusedMultiplyAdd32 = fusedMultiplyAdd32

// SelectSections keeps the //#if sections of WGSL text that features select.
var SelectSections = selectSections

// CheckSubgroupLayout checks the subgroup layout probe's record of one
// workgroup.
var CheckSubgroupLayout = checkLayout
