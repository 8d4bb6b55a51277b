// Command sparselora fine-tunes LLaMA-family models with LoRA and SparseLoRA on
// any WebGPU adapter, and benchmarks the kernels it is built from.
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/sparselora/sparselora/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
