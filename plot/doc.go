// Package plot owns the charts of a training run: it reads a run's
// metrics.jsonl, builds the charts (loss, learning rate, throughput, FLOP
// ratio, per-layer kept-channel fractions) with gonum.org/v1/plot, renders
// them to images (PNG files, or an image.RGBA that a live window can show each
// frame) and writes a run's summary.md. It also draws the grouped bar chart of
// benchmark reports. Nothing here prints: results are returned.
//
// The package is named plot like gonum's; this package imports gonum's as
// gplot.
package plot
