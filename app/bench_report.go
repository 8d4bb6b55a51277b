package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/plot"
)

// runBenchReport merges the JSON reports of `bench gemm` and `bench step`
// runs (of different machines and adapters) into one markdown table and an
// optional bar chart.
func runBenchReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench report", "bench report FILE.json... [--out FILE.md] [--png FILE.png]", stdout, stderr)
	out := fs.String("out", "", "also write the markdown table to this file")
	pngOut := fs.String("png", "", "write a bar chart of TFLOP/s per shape and adapter to this PNG file")
	width := fs.Int("width", 0, "chart width in pixels (0: by the number of shapes)")
	height := fs.Int("height", 560, "chart height in pixels")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	files := fs.Args()
	if len(files) == 0 {
		fmt.Fprintln(stderr, "sparselora bench report: want one or more JSON reports of `bench gemm` or `bench step`")
		return errUsage
	}
	if *width != 0 {
		if err := checkRange("width", *width, 64, 8192, "a width in pixels (0: automatic)"); err != nil {
			return err
		}
	}
	if err := checkRange("height", *height, 64, 8192, "a height in pixels"); err != nil {
		return err
	}
	if err := checkOutputPath("out", *out); err != nil {
		return err
	}
	if err := checkOutputPath("png", *pngOut); err != nil {
		return err
	}
	var rows []reportRow
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		rs, err := readBenchReport(f)
		if err != nil {
			return err
		}
		rows = append(rows, rs...)
	}
	rows = compareRows(rows)
	table := reportTable(rows)
	if _, err := io.WriteString(stdout, table); err != nil {
		return err
	}
	if *out != "" {
		if err := atomicfile.WriteFile(*out, []byte(table)); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", *out)
	}
	if *pngOut != "" {
		chart := reportChart(rows)
		w := *width
		if w == 0 {
			w = min(2400, max(900, 200+200*len(chart.Groups)))
		}
		img, err := chart.Render(w, *height)
		if err != nil {
			return err
		}
		if err := plot.WritePNG(*pngOut, img); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", *pngOut)
	}
	return nil
}

// reportRow is one timed variant of one report, ready for the table.
type reportRow struct {
	file                     string
	adapter, backend, driver string
	bench                    string // "gemm" or "step"
	shape                    string // what was timed, for the table
	chartShape               string // a shorter form for the chart's groups
	variant                  string
	ms, tflops               float64
	speedup                  float64 // baseline ms / ms; NaN without a baseline
}

// key identifies rows that time the same work, so that they compare.
func (r reportRow) key() string { return r.bench + "\x00" + r.shape + "\x00" + r.variant }

// series names the adapter (and backend) in the chart's legend.
func (r reportRow) series() string { return r.adapter + " (" + r.backend + ")" }

// benchReportJSON holds the fields of both report kinds; a top-level "shape"
// marks a `bench step` report, results with "layout" a `bench gemm` one.
type benchReportJSON struct {
	Adapter *gpu.AdapterInfo `json:"adapter"`
	Date    string           `json:"date"`
	// bench step
	Shape        *string `json:"shape"`
	Layers       int     `json:"layers"`
	Batch        int     `json:"batch"`
	Seq          int     `json:"seq"`
	OutputTokens int     `json:"output_tokens"`
	LoRARank     int     `json:"lora_rank"`
	LoRATargets  string  `json:"lora_targets"`
	Weights      string  `json:"weights"`
	Sparsity     string  `json:"sparsity"`
	Results      []struct {
		// bench gemm
		Shape   string `json:"shape"`
		Layout  string `json:"layout"`
		BF16    bool   `json:"b_bf16"`
		UsefulM int    `json:"useful_m"`
		UsefulN int    `json:"useful_n"`
		UsefulK int    `json:"useful_k"`
		Tile    string `json:"tile"`
		// both
		Variant  string   `json:"variant"`
		MedianMS *float64 `json:"median_ms"`
		TFLOPS   *float64 `json:"tflops"`
	} `json:"results"`
}

// readBenchReport reads one report; errors name the file (and the result).
func readBenchReport(path string) ([]reportRow, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("%s: not a benchmark report: the file is empty", path)
	}
	var rep benchReportJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("%s: not a benchmark report: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: not a benchmark report: more than one JSON value", path)
	}
	notReport := func(why string) error {
		return fmt.Errorf("%s: not a report of `sparselora bench gemm` or `bench step`: %s", path, why)
	}
	if rep.Adapter == nil || rep.Adapter.Name() == "" {
		return nil, notReport(`no "adapter"`)
	}
	if len(rep.Results) == 0 {
		return nil, notReport(`no "results"`)
	}
	bench := "step"
	if rep.Shape == nil {
		bench = "gemm"
	}
	base := reportRow{file: path, adapter: rep.Adapter.Name(), backend: rep.Adapter.BackendName,
		driver: rep.Adapter.Description, bench: bench}
	if bench == "step" {
		if rep.Layers <= 0 || rep.Batch <= 0 || rep.Seq <= 0 {
			return nil, fmt.Errorf(`%s: bench step report without positive "layers", "batch" and "seq"`, path)
		}
		base.shape = fmt.Sprintf("%s, %d layers, %dx%d tokens (%d scored), r=%d on %s, %s weights, sparsity %s",
			*rep.Shape, rep.Layers, rep.Batch, rep.Seq, rep.OutputTokens, rep.LoRARank, rep.LoRATargets, rep.Weights, rep.Sparsity)
		base.chartShape = fmt.Sprintf("%s %dL %dx%d", *rep.Shape, rep.Layers, rep.Batch, rep.Seq)
	}
	var rows []reportRow
	for i, res := range rep.Results {
		where := fmt.Sprintf("%s: results[%d]", path, i)
		if res.MedianMS == nil || !(*res.MedianMS > 0) || math.IsInf(*res.MedianMS, 0) {
			return nil, fmt.Errorf(`%s: want a positive "median_ms"`, where)
		}
		if res.TFLOPS == nil || !(*res.TFLOPS >= 0) || math.IsInf(*res.TFLOPS, 0) {
			return nil, fmt.Errorf(`%s: want a "tflops" >= 0`, where)
		}
		if res.Variant == "" {
			return nil, fmt.Errorf(`%s: no "variant"`, where)
		}
		r := base
		r.variant, r.ms, r.tflops = res.Variant, *res.MedianMS, *res.TFLOPS
		if bench == "gemm" {
			if res.Shape == "" || res.Layout == "" {
				return nil, fmt.Errorf(`%s: a bench gemm result needs "shape" and "layout" (a bench step report has a top-level "shape")`, where)
			}
			b := "f32"
			if res.BF16 {
				b = "bf16"
			}
			r.shape = fmt.Sprintf("%s %s %s", res.Shape, res.Layout, b)
			if res.Tile != "" {
				r.shape += " tile " + res.Tile
			}
			r.chartShape = r.shape
			if res.Variant != "dense" && res.UsefulM > 0 {
				r.variant = fmt.Sprintf("%s %dx%dx%d", res.Variant, res.UsefulM, res.UsefulN, res.UsefulK)
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// compareRows orders rows by what they time (in order of first appearance,
// input order within) and sets each row's speed-up over the first row that
// timed the same work: the first adapter's.
func compareRows(rows []reportRow) []reportRow {
	order := map[string]int{}
	baseline := map[string]float64{}
	var keys []string
	byKey := map[string][]reportRow{}
	for _, r := range rows {
		k := r.key()
		if _, ok := order[k]; !ok {
			order[k] = len(keys)
			keys = append(keys, k)
			baseline[k] = r.ms
		}
		r.speedup = baseline[k] / r.ms
		byKey[k] = append(byKey[k], r)
	}
	out := make([]reportRow, 0, len(rows))
	for _, k := range keys {
		out = append(out, byKey[k]...)
	}
	return out
}

// reportTable renders rows as a markdown table (no trailing spaces).
func reportTable(rows []reportRow) string {
	var b strings.Builder
	b.WriteString("| adapter | backend | driver | benchmark | shape | variant | ms | TFLOP/s | speed-up vs first adapter |\n")
	b.WriteString("|---|---|---|---|---|---|---:|---:|---:|\n")
	for _, r := range rows {
		speed := ""
		if !math.IsNaN(r.speedup) {
			speed = fmt.Sprintf("%.2fx", r.speedup)
		}
		cells := []string{r.adapter, r.backend, r.driver, r.bench, r.shape, r.variant,
			significant(r.ms, 4), significant(r.tflops, 3), speed}
		for i, c := range cells {
			cells[i] = markdownCell(c)
		}
		b.WriteString(strings.TrimRight("| "+strings.Join(cells, " | ")+" |", " ") + "\n")
	}
	return b.String()
}

// markdownCell escapes what would break a table cell.
func markdownCell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.Join(strings.Fields(s), " ")
}

// significant formats v with n significant digits, in plain decimals (no
// exponent) for the magnitudes benchmarks produce.
func significant(v float64, n int) string {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	decimals := n - 1 - int(math.Floor(math.Log10(math.Abs(v))))
	if decimals < 0 {
		decimals = 0
	}
	if decimals > 12 {
		return strconv.FormatFloat(v, 'g', n, 64)
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

// reportChart groups TFLOP/s by what was timed, one series per adapter. A
// second report of the same adapter and work becomes a series of its own.
func reportChart(rows []reportRow) plot.GroupedBars {
	chart := plot.GroupedBars{Title: "Throughput by benchmark and adapter", YLabel: "TFLOP/s (useful FLOPs)"}
	group := map[string]int{}
	for _, r := range rows {
		if _, ok := group[r.key()]; !ok {
			group[r.key()] = len(chart.Groups)
			chart.Groups = append(chart.Groups, r.bench+" "+r.chartShape+"\n"+r.variant)
		}
	}
	seriesIndex := map[string]int{}
	for _, r := range rows {
		g := group[r.key()]
		name := r.series()
		for n := 2; ; n++ {
			i, ok := seriesIndex[name]
			if !ok {
				values := make([]float64, len(chart.Groups))
				for j := range values {
					values[j] = math.NaN()
				}
				seriesIndex[name] = len(chart.Series)
				chart.Series = append(chart.Series, plot.BarSeries{Name: name, Values: values})
				i = seriesIndex[name]
			}
			if math.IsNaN(chart.Series[i].Values[g]) {
				chart.Series[i].Values[g] = r.tflops
				break
			}
			name = fmt.Sprintf("%s #%d", r.series(), n)
		}
	}
	return chart
}
