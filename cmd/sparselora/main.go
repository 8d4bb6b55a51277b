// Command sparselora fine-tunes LLaMA-family models with LoRA and SparseLoRA on
// any WebGPU adapter, and benchmarks the kernels it is built from.
package main

import (
	"context"
	"os"
	"runtime"

	"github.com/sparselora/sparselora/app"
	"github.com/sparselora/sparselora/app/window"
)

// The live-metrics window (GLFW; Cocoa on macOS) must run on the process's
// main OS thread: keep the main goroutine there.
func init() { runtime.LockOSThread() }

func main() {
	// Ctrl-C, SIGTERM or SIGHUP stops the work at its next check; a second
	// one quits at once. Either way the exit code is 130. SIGPIPE is ignored.
	ctx, interrupted, stop := app.HandleInterrupts(os.Stderr)
	// The CLI runs on another goroutine; this one lends the main thread to
	// `train`'s window, if it opens one, and returns when the CLI does.
	code := window.Serve(ctx, func(ctx context.Context) int {
		return app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	})
	if interrupted() {
		code = app.ExitInterrupted
	}
	stop()
	os.Exit(code)
}
