// Package shaders holds the WGSL source of every kernel, one file per kernel
// family, embedded into the binary. Each file's header comment documents its
// bindings, data layouts, workgroup shape and the compile-time constants the gpu
// package prepends (`const NAME = value;`) to specialise it. prelude.wgsl is not
// a kernel: it holds what kernels share (16-bit float widening, the 2-D grid
// index, workgroup reductions), and package gpu compiles every kernel as the
// device's enable directives, its constants, then the prelude, then its file,
// keeping the `//#if subgroups` ... `//#else` ... `//#endif` sections that the
// device's features select. Every kernel therefore declares WORKGROUP_SIZE,
// and no kernel repeats what the prelude has.
package shaders

import (
	"embed"
	"fmt"
)

//go:embed *.wgsl
var files embed.FS

// Source returns the WGSL text of file (e.g. "gemm.wgsl").
func Source(file string) (string, error) {
	b, err := files.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("shader %s: %w", file, err)
	}
	return string(b), nil
}
