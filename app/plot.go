package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sparselora/sparselora/plot"
)

// runPlot draws a training run's charts and summary from its metrics.jsonl.
func runPlot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("plot", "plot RUN_DIR [--out DIR] [--log-loss]", stdout, stderr)
	out := fs.String("out", "", "directory for the PNG charts and summary.md (default: RUN_DIR)")
	logLoss := fs.Bool("log-loss", false, "draw the loss on a logarithmic axis")
	if err := parseCommand(fs, args, "RUN_DIR"); err != nil {
		return err
	}
	runDir := fs.Arg(0)
	recs, err := plot.ReadMetrics(filepath.Join(runDir, plot.MetricsFileName))
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		return fmt.Errorf("%s: no records yet", filepath.Join(runDir, plot.MetricsFileName))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	outDir := *out
	if outDir == "" {
		outDir = runDir
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	written, err := plot.WriteRunWith(outDir, recs, plot.RunOptions{
		Options:    plot.Options{LogLoss: *logLoss},
		ConfigFile: filepath.Join(runDir, plot.ConfigFileName),
	})
	for _, path := range written {
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	return err
}
