package plot

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"strconv"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Chart names one chart of a training run.
type Chart int

const (
	ChartLoss       Chart = iota // training and evaluation loss
	ChartLR                      // learning rate
	ChartThroughput              // tokens/s and ms/step
	ChartFLOPs                   // sparse/dense FLOP ratio per step
	ChartSparsity                // per-layer kept-channel fractions, MLP and attention
)

// AllCharts lists every chart, in the order WriteRun writes them.
func AllCharts() []Chart {
	return []Chart{ChartLoss, ChartLR, ChartThroughput, ChartFLOPs, ChartSparsity}
}

// String is the chart's short name, also its file name without ".png".
func (c Chart) String() string {
	switch c {
	case ChartLoss:
		return "loss"
	case ChartLR:
		return "lr"
	case ChartThroughput:
		return "throughput"
	case ChartFLOPs:
		return "flops"
	case ChartSparsity:
		return "sparsity"
	}
	return "chart(" + strconv.Itoa(int(c)) + ")"
}

// FileName is the PNG file WriteRun writes the chart to.
func (c Chart) FileName() string { return c.String() + ".png" }

// DefaultSize is the chart's PNG size in pixels: taller for the charts with
// two panels.
func (c Chart) DefaultSize() (w, h int) {
	switch c {
	case ChartThroughput:
		return 900, 700
	case ChartSparsity:
		return 900, 800
	}
	return 900, 500
}

// Options change how charts are drawn.
type Options struct {
	// LogLoss draws the loss on a logarithmic axis.
	LogLoss bool
}

// DPI is the resolution at which charts are rendered to pixels.
const DPI = 96

// pixels converts a pixel count at DPI to a vg length.
func pixels(n int) vg.Length { return vg.Length(n) * vg.Inch / DPI }

// Render draws a chart of recs into a new w x h image with default options.
func Render(kind Chart, recs []Record, w, h int) (*image.RGBA, error) {
	return RenderWith(kind, recs, w, h, Options{})
}

// RenderWith draws a chart of recs into a new w x h image.
func RenderWith(kind Chart, recs []Record, w, h int, opts Options) (*image.RGBA, error) {
	if w < 64 || h < 64 {
		return nil, fmt.Errorf("%s chart: size %dx%d is too small (want at least 64x64 pixels)", kind, w, h)
	}
	c := vgimg.NewWith(vgimg.UseWH(pixels(w), pixels(h)), vgimg.UseDPI(DPI))
	if err := Draw(draw.New(c), kind, recs, opts); err != nil {
		return nil, err
	}
	img, ok := c.Image().(*image.RGBA)
	if !ok {
		return nil, fmt.Errorf("%s chart: renderer made a %T, not an *image.RGBA", kind, c.Image())
	}
	return img, nil
}

// Draw draws a chart of recs onto c, filling it (background included), so
// that a window can draw onto a canvas of its own, frame after frame.
func Draw(c draw.Canvas, kind Chart, recs []Record, opts Options) (err error) {
	// gonum/plot reports some impossible drawings (such as a log axis over
	// non-positive values) by panicking; the builders avoid those, and this
	// turns any that remain into an error.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("drawing the %s chart: %v", kind, r)
		}
	}()
	fig, err := buildFigure(kind, recs, opts)
	if err != nil {
		return fmt.Errorf("%s chart: %w", kind, err)
	}
	fig.draw(c)
	return nil
}

// figure is one chart: panels stacked top to bottom with aligned data areas,
// and an optional footer strip (a color bar) below them.
type figure struct {
	panels []*gplot.Plot
	footer *gplot.Plot
}

const (
	figurePadding = vg.Length(6)
	footerHeight  = vg.Length(48)
)

func (f figure) draw(c draw.Canvas) {
	for _, p := range append([]*gplot.Plot{f.footer}, f.panels...) {
		// Without data (a live window's first frame) show unit axes, not
		// gonum's default of -1..1 around zero.
		if p != nil && math.IsInf(p.X.Min, 1) {
			p.X.Min, p.X.Max = 0, 1
		}
		if p != nil && math.IsInf(p.Y.Min, 1) {
			p.Y.Min, p.Y.Max = 0, 1
		}
		if p != nil {
			widenFlatRange(&p.Y)
		}
	}
	// The panels paint their own backgrounds; the padding around them is
	// painted here, so that a reused canvas keeps nothing of a former frame.
	c.SetColor(color.White)
	c.Fill(c.Rectangle.Path())
	c = draw.Crop(c, figurePadding, -figurePadding, figurePadding, -figurePadding)
	if f.footer != nil {
		footer := draw.Crop(c, 0, 0, 0, -(c.Max.Y - c.Min.Y - footerHeight))
		f.footer.Draw(footer)
		c = draw.Crop(c, 0, 0, footerHeight+figurePadding, 0)
	}
	if len(f.panels) == 1 {
		f.panels[0].Draw(c)
		return
	}
	rows := make([][]*gplot.Plot, len(f.panels))
	for i, p := range f.panels {
		rows[i] = []*gplot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(f.panels), Cols: 1, PadY: 3 * figurePadding}
	canvases := gplot.Align(rows, tiles, c)
	for i, p := range f.panels {
		p.Draw(canvases[i][0])
	}
}

// widenFlatRange gives an axis whose data are one value v (a constant learning
// rate, say) a range around v. gonum widens such a range to v-1..v+1, which
// for a value like 1e-3 is a -1..1 axis on which the line seems to sit at 0.
func widenFlatRange(ax *gplot.Axis) {
	v := ax.Min
	if ax.Max != v || v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return
	}
	half := math.Abs(v) / 2
	ax.Min, ax.Max = v-half, v+half
}

func buildFigure(kind Chart, recs []Record, opts Options) (figure, error) {
	switch kind {
	case ChartLoss:
		p, err := lossPlot(recs, opts.LogLoss)
		return figure{panels: []*gplot.Plot{p}}, err
	case ChartLR:
		p, err := seriesPlot("Learning rate", "learning rate", recs, func(r Record) float64 { return r.LR })
		return figure{panels: []*gplot.Plot{p}}, err
	case ChartThroughput:
		tps, err := seriesPlot("Throughput", "tokens/s", recs, func(r Record) float64 { return r.TokensPerS })
		if err != nil {
			return figure{}, err
		}
		ms, err := seriesPlot("Step time", "ms/step", recs, func(r Record) float64 { return r.MSPerStep })
		return figure{panels: []*gplot.Plot{tps, ms}}, err
	case ChartFLOPs:
		p, err := flopsPlot(recs)
		return figure{panels: []*gplot.Plot{p}}, err
	case ChartSparsity:
		return sparsityFigure(recs)
	}
	return figure{}, fmt.Errorf("unknown chart %d", int(kind))
}

// Series colors (the matplotlib "tab10" palette, which reads well on white).
var (
	colorBlue   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colorOrange = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colorGreen  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	colorRed    = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	colorGray   = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}
)

// seriesColor cycles through the palette for series without a fixed meaning.
func seriesColor(i int) color.Color {
	tab10 := []color.RGBA{colorBlue, colorOrange, colorGreen, colorRed,
		{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, {R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
		{R: 0xe3, G: 0x77, B: 0xc2, A: 0xff}, colorGray,
		{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff}, {R: 0x17, G: 0xbe, B: 0xcf, A: 0xff}}
	return tab10[i%len(tab10)]
}

const stepAxisLabel = "optimizer step"

func newPlot(title, xLabel, yLabel string) *gplot.Plot {
	p := gplot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Legend.Top = true
	p.X.Tick.Marker = niceTicks{integer: true}
	p.Y.Tick.Marker = niceTicks{}
	p.Add(plotter.NewGrid())
	useSans(p)
	return p
}

// useSans sets every text of p in Liberation Sans (gonum's default is the
// serif face), which reads better at screen sizes.
func useSans(p *gplot.Plot) {
	const sans = "Sans"
	p.Title.TextStyle.Font.Variant = sans
	p.X.Label.TextStyle.Font.Variant = sans
	p.Y.Label.TextStyle.Font.Variant = sans
	p.X.Tick.Label.Font.Variant = sans
	p.Y.Tick.Label.Font.Variant = sans
	p.Legend.TextStyle.Font.Variant = sans
}

// points collects (step, value) for the records where value is finite and
// keep accepts it.
func points(recs []Record, value func(Record) float64, keep func(float64) bool) plotter.XYs {
	var xys plotter.XYs
	for _, r := range recs {
		v := value(r)
		if math.IsNaN(v) || math.IsInf(v, 0) || (keep != nil && !keep(v)) {
			continue
		}
		xys = append(xys, plotter.XY{X: float64(r.Step), Y: v})
	}
	return xys
}

// maxLineBuckets bounds the points of a drawn line: stroking a long jagged
// path costs far more than the pixels it covers, and a live window redraws
// every frame.
const maxLineBuckets = 500

// envelope thins xys to at most 2*buckets points, keeping the lowest and the
// highest point of each run of consecutive points (in x order), so that the
// drawn line keeps its extremes.
func envelope(xys plotter.XYs, buckets int) plotter.XYs {
	if len(xys) <= 2*buckets {
		return xys
	}
	out := make(plotter.XYs, 0, 2*buckets)
	for b := range buckets {
		lo, hi := b*len(xys)/buckets, (b+1)*len(xys)/buckets
		minI, maxI := lo, lo
		for i := lo; i < hi; i++ {
			if xys[i].Y < xys[minI].Y {
				minI = i
			}
			if xys[i].Y > xys[maxI].Y {
				maxI = i
			}
		}
		out = append(out, xys[min(minI, maxI)])
		if minI != maxI {
			out = append(out, xys[max(minI, maxI)])
		}
	}
	return out
}

// markersUpTo is the number of points up to which a line also marks each point.
const markersUpTo = 40

// addSeries adds a line (with point markers when there are few points, so that
// a single point is visible) and its legend entry when name is not empty.
func addSeries(p *gplot.Plot, name string, xys plotter.XYs, c color.Color, markers bool) error {
	if len(xys) == 0 {
		return nil
	}
	line, err := plotter.NewLine(envelope(xys, maxLineBuckets))
	if err != nil {
		return fmt.Errorf("series %q: %w", name, err)
	}
	line.Color = c
	line.Width = vg.Points(1.5)
	p.Add(line)
	thumbs := []gplot.Thumbnailer{line}
	if markers || len(xys) <= markersUpTo {
		dots, err := plotter.NewScatter(xys)
		if err != nil {
			return fmt.Errorf("series %q: %w", name, err)
		}
		dots.Color = c
		dots.Shape = draw.CircleGlyph{}
		dots.Radius = vg.Points(2.5)
		p.Add(dots)
		thumbs = append(thumbs, dots)
	}
	if name != "" {
		p.Legend.Add(name, thumbs...)
	}
	return nil
}

func lossPlot(recs []Record, logY bool) (*gplot.Plot, error) {
	p := newPlot("Loss", stepAxisLabel, "loss")
	var keep func(float64) bool
	if logY {
		keep = func(v float64) bool { return v > 0 }
	}
	train := points(recs, func(r Record) float64 { return r.Loss }, keep)
	eval := points(recs, func(r Record) float64 { return r.EvalLoss }, keep)
	if logY && len(train)+len(eval) > 0 {
		p.Y.Scale = gplot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		p.Y.Label.Text = "loss (log scale)"
	}
	if err := addSeries(p, "train", train, colorBlue, false); err != nil {
		return nil, err
	}
	if err := addSeries(p, "eval", eval, colorOrange, true); err != nil {
		return nil, err
	}
	return p, nil
}

// seriesPlot is a one-series chart of a per-step figure.
func seriesPlot(title, yLabel string, recs []Record, value func(Record) float64) (*gplot.Plot, error) {
	p := newPlot(title, stepAxisLabel, yLabel)
	if err := addSeries(p, "", points(recs, value, nil), colorBlue, false); err != nil {
		return nil, err
	}
	return p, nil
}

// flopsPlot draws the FLOP ratio per step, dense steps (the warm-up before
// sparsity starts) and sparse steps in different colors.
func flopsPlot(recs []Record) (*gplot.Plot, error) {
	p := newPlot("FLOPs of each step relative to dense LoRA", stepAxisLabel, "FLOP ratio (sparse / dense)")
	ratio := func(r Record) float64 { return r.FLOPsRatio }
	all := points(recs, ratio, nil)
	if err := addSeries(p, "", all, colorGray, false); err != nil {
		return nil, err
	}
	var dense, sparse []Record
	for _, r := range recs {
		if r.Sparse {
			sparse = append(sparse, r)
		} else {
			dense = append(dense, r)
		}
	}
	for _, s := range []struct {
		name string
		recs []Record
		c    color.Color
	}{{"dense step", dense, colorRed}, {"sparse step", sparse, colorBlue}} {
		xys := points(s.recs, ratio, nil)
		if len(xys) == 0 {
			continue
		}
		dots, err := plotter.NewScatter(xys)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		dots.Color = s.c
		dots.Shape = draw.CircleGlyph{}
		dots.Radius = vg.Points(2.5)
		p.Add(dots)
		p.Legend.Add(s.name, dots)
	}
	// 0 at the bottom so the ratio reads as a fraction; room above 1 for the legend.
	p.Y.Min = 0
	p.Y.Max = 1.3
	for _, xy := range all {
		p.Y.Max = math.Max(p.Y.Max, 1.3*xy.Y)
	}
	return p, nil
}

// maxHeatColumns bounds the heat map's columns: longer runs are resampled, so
// that drawing cost (one rectangle a cell) stays flat for the live window.
const maxHeatColumns = 240

// keptGrid is a heat-map grid: columns are steps, rows are layers.
type keptGrid struct {
	steps  []float64
	kept   [][]float64
	layers int
}

func (g keptGrid) Dims() (c, r int) { return len(g.steps), g.layers }
func (g keptGrid) X(c int) float64  { return g.steps[c] }
func (g keptGrid) Y(r int) float64  { return float64(r) }
func (g keptGrid) Z(c, r int) float64 {
	if r < len(g.kept[c]) {
		return g.kept[c][r]
	}
	return math.NaN()
}

// newKeptGrid collects the records that carry per-layer fractions. When there
// are more than maxHeatColumns, it samples at evenly spaced steps, each column
// showing the latest record at or before its step.
func newKeptGrid(recs []Record, kept func(Record) []float64) (keptGrid, bool) {
	var g keptGrid
	var have []Record
	for _, r := range recs {
		if k := kept(r); len(k) > 0 {
			have = append(have, r)
			g.layers = max(g.layers, len(k))
		}
	}
	if len(have) == 0 {
		return g, false
	}
	if len(have) <= maxHeatColumns {
		for _, r := range have {
			g.steps = append(g.steps, float64(r.Step))
			g.kept = append(g.kept, kept(r))
		}
		return g, true
	}
	first, last := float64(have[0].Step), float64(have[len(have)-1].Step)
	j := 0
	for c := range maxHeatColumns {
		step := first + (last-first)*float64(c)/float64(maxHeatColumns-1)
		for j+1 < len(have) && float64(have[j+1].Step) <= step {
			j++
		}
		g.steps = append(g.steps, step)
		g.kept = append(g.kept, kept(have[j]))
	}
	return g, true
}

// keptHeat draws a keptGrid as cells colored by kept fraction in [0, 1].
// gonum's HeatMap fills cells edge to edge, and anti-aliasing then shows the
// background through every seam; these cells overlap their neighbours by a
// point to the right and above.
type keptHeat struct {
	grid    keptGrid
	palette []color.Color
	missing color.Color // layers a record does not report
}

// cellEdges returns the lower and upper edge of cell i of n cells centered at
// center(i): half way to the neighbours, a unit wide when there is only one.
func cellEdges(i, n int, center func(int) float64) (lo, hi float64) {
	c := center(i)
	if n == 1 {
		return c - 0.5, c + 0.5
	}
	if i > 0 {
		lo = (center(i-1) + c) / 2
	} else {
		lo = c - (center(1)-c)/2
	}
	if i < n-1 {
		hi = (c + center(i+1)) / 2
	} else {
		hi = c + (c-center(n-2))/2
	}
	return lo, hi
}

func (h keptHeat) DataRange() (xmin, xmax, ymin, ymax float64) {
	cols, rows := h.grid.Dims()
	xmin, _ = cellEdges(0, cols, h.grid.X)
	_, xmax = cellEdges(cols-1, cols, h.grid.X)
	ymin, _ = cellEdges(0, rows, h.grid.Y)
	_, ymax = cellEdges(rows-1, rows, h.grid.Y)
	return xmin, xmax, ymin, ymax
}

func (h keptHeat) Plot(c draw.Canvas, p *gplot.Plot) {
	trX, trY := p.Transforms(&c)
	cols, rows := h.grid.Dims()
	const overlap = vg.Length(1)
	for i := range cols {
		x0, x1 := cellEdges(i, cols, h.grid.X)
		left, right := trX(x0), trX(x1)
		if i < cols-1 {
			right += overlap
		}
		for j := range rows {
			y0, y1 := cellEdges(j, rows, h.grid.Y)
			bottom, top := trY(y0), trY(y1)
			if j < rows-1 {
				top += overlap
			}
			col := h.missing
			if v := h.grid.Z(i, j); !math.IsNaN(v) {
				k := int(math.Round(math.Min(1, math.Max(0, v)) * float64(len(h.palette)-1)))
				col = h.palette[k]
			}
			c.FillPolygon(col, c.ClipPolygonXY([]vg.Point{{X: left, Y: bottom}, {X: right, Y: bottom}, {X: right, Y: top}, {X: left, Y: top}}))
		}
	}
}

// keptColorMap runs from dark violet (few channels kept) to yellow (dense),
// with luminance rising throughout (after viridis), so that the fraction
// reads in grayscale too.
func keptColorMap() (palette.ColorMap, error) {
	cm, err := moreland.NewLuminance([]color.Color{
		color.RGBA{R: 0x44, G: 0x01, B: 0x54, A: 0xff},
		color.RGBA{R: 0x3b, G: 0x52, B: 0x8b, A: 0xff},
		color.RGBA{R: 0x21, G: 0x91, B: 0x8c, A: 0xff},
		color.RGBA{R: 0x5e, G: 0xc9, B: 0x62, A: 0xff},
		color.RGBA{R: 0xfd, G: 0xe7, B: 0x25, A: 0xff},
	})
	if err != nil {
		return nil, fmt.Errorf("kept-fraction color map: %w", err)
	}
	cm.SetMin(0)
	cm.SetMax(1)
	return cm, nil
}

func sparsityFigure(recs []Record) (figure, error) {
	cm, err := keptColorMap()
	if err != nil {
		return figure{}, err
	}
	pal := cm.Palette(128)
	var fig figure
	for _, part := range []struct {
		title string
		kept  func(Record) []float64
	}{
		{"MLP: kept fraction of channels per layer", func(r Record) []float64 { return r.KeptMLP }},
		{"Attention: kept fraction of channels per layer", func(r Record) []float64 { return r.KeptAttn }},
	} {
		p := newPlot(part.title, stepAxisLabel, "layer")
		p.Y.Tick.Marker = niceTicks{integer: true}
		grid, ok := newKeptGrid(recs, part.kept)
		if !ok {
			p.Title.Text += " (no data)"
		} else {
			p.Add(keptHeat{grid: grid, palette: pal.Colors(), missing: color.RGBA{R: 0xdd, G: 0xdd, B: 0xdd, A: 0xff}})
		}
		fig.panels = append(fig.panels, p)
	}
	bar := gplot.New()
	bar.Add(&plotter.ColorBar{ColorMap: cm})
	bar.HideY()
	bar.X.Tick.Marker = niceTicks{}
	useSans(bar)
	bar.X.Label.Text = "kept fraction (1 = dense)"
	bar.X.Padding = 0
	fig.footer = bar
	return fig, nil
}

// niceTicks labels 1, 2 or 5 times a power of ten, three to five labels (few
// enough for a small live-window chart), with unlabeled minor ticks between them; integer keeps labels on
// whole numbers (steps, layer indices). gonum's DefaultTicks can choose steps
// such as 15, which read badly on a step axis.
type niceTicks struct{ integer bool }

func (t niceTicks) Ticks(lo, hi float64) []gplot.Tick {
	if math.IsNaN(lo) || math.IsNaN(hi) || math.IsInf(lo, 0) || math.IsInf(hi, 0) {
		return nil
	}
	if !(hi > lo) {
		return []gplot.Tick{{Value: lo, Label: strconv.FormatFloat(lo, 'g', 4, 64)}}
	}
	span := hi - lo
	mag := math.Pow(10, math.Floor(math.Log10(span/4)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if span/(m*mag) <= 5 {
			step = m * mag
			break
		}
	}
	if t.integer && step < 1 {
		step = 1
	}
	minor := step / 2
	if t.integer && minor < 1 {
		minor = step
	}
	decimals := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	var ticks []gplot.Tick
	first := math.Ceil(lo/minor - 1e-9)
	for i := first; i*minor <= hi+minor*1e-9; i++ {
		v := i * minor
		if math.Abs(v) < minor*1e-9 {
			v = 0
		}
		tick := gplot.Tick{Value: v}
		if q := v / step; math.Abs(q-math.Round(q)) < 1e-6 {
			tick.Label = tickLabel(v, step, decimals)
		}
		ticks = append(ticks, tick)
	}
	return ticks
}

// maxFixedLabel is the longest tick label written in fixed notation; longer
// ones (values like 1e12 or 3e-9) switch to exponent notation.
const maxFixedLabel = 10

// tickLabel writes a tick value at a step's precision.
func tickLabel(v, step float64, decimals int) string {
	label := strconv.FormatFloat(v, 'f', decimals, 64)
	if len(label) <= maxFixedLabel || v == 0 {
		return label
	}
	digits := int(math.Floor(math.Log10(math.Abs(v)))) - int(math.Floor(math.Log10(step))) + 1
	return strconv.FormatFloat(v, 'g', min(max(digits, 1), 15), 64)
}

// logTicks labels 1, 2 and 5 times powers of ten on a log axis that spans a
// decade or more (gonum's LogTicks labels powers of ten only); on a shorter
// one, where those would leave one or two labels, it places nice linear
// values, unevenly spaced on the log axis but all labeled.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []gplot.Tick {
	if !(lo > 0) || !(hi >= lo) || math.IsInf(hi, 0) {
		return nil
	}
	if hi < 10*lo {
		return niceTicks{}.Ticks(lo, hi)
	}
	var ticks []gplot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		base := math.Pow(10, e)
		for m := 1; m <= 9; m++ {
			v := float64(m) * base
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			t := gplot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = strconv.FormatFloat(v, 'g', -1, 64)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}
