package window

import (
	"fmt"
	"image"
	"image/color"
	stddraw "image/draw"
	"math"
	"strings"
	"time"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/sparselora/sparselora/plot"
)

// FrameOptions change how a frame is drawn.
type FrameOptions struct {
	// LogLoss draws the loss on a logarithmic axis (the l key).
	LogLoss bool
	// Scale is the ratio of framebuffer pixels to window coordinates (2 on a
	// Retina display): text and lines grow with it, so they keep their size
	// on screen.
	Scale float64
	// Stopping says the window asked the run to stop.
	Stopping bool
}

// Frame draws snapshots into images of the window's framebuffer size. It
// keeps the chart area of the previous frame and redraws the charts only when
// the records, the size or the options change; the status lines are redrawn
// every frame (they are cheap, and step, ETA and pause change between records).
type Frame struct {
	img *image.RGBA

	chartsVersion int
	chartsLog     bool
	chartsScale   float64
	chartsValid   bool
}

// Layout of a frame, in window coordinates (multiplied by Scale for pixels).
const (
	headerLines   = 4
	lineHeight    = 17.0
	headerPadding = 6.0
	stripRowH     = 20.0
	stripTitleH   = 18.0
	fontSize      = 10.5 // points at 96 dpi
	minFrameSide  = 64
)

var (
	colorBackground = color.RGBA{R: 0xf4, G: 0xf4, B: 0xf4, A: 0xff}
	colorText       = color.RGBA{R: 0x20, G: 0x20, B: 0x20, A: 0xff}
	colorDim        = color.RGBA{R: 0x60, G: 0x60, B: 0x60, A: 0xff}
	colorAlert      = color.RGBA{R: 0xc0, G: 0x20, B: 0x20, A: 0xff}
	colorMLP        = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colorAttn       = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colorCell       = color.RGBA{R: 0xe2, G: 0xe2, B: 0xe2, A: 0xff}
)

// headerHeight and stripHeight are the status lines' and the kept-fraction
// strip's heights in pixels.
func headerHeight(scale float64) int {
	return int(math.Ceil((headerLines*lineHeight + 2*headerPadding) * scale))
}

func stripHeight(scale float64) int {
	return int(math.Ceil((stripTitleH + 2*stripRowH + 2*headerPadding) * scale))
}

// Render draws s into a w x h image (the framebuffer size). The image is
// reused by the next call: copy it to keep it.
func (f *Frame) Render(s Snapshot, w, h int, opts FrameOptions) (*image.RGBA, error) {
	if w < minFrameSide || h < minFrameSide {
		return nil, fmt.Errorf("window frame: size %dx%d is too small", w, h)
	}
	if opts.Scale <= 0 {
		opts.Scale = 1
	}
	if f.img == nil || f.img.Rect.Dx() != w || f.img.Rect.Dy() != h {
		f.img = image.NewRGBA(image.Rect(0, 0, w, h))
		f.chartsValid = false
	}
	hh := min(headerHeight(opts.Scale), h)
	if !f.chartsValid || f.chartsVersion != s.Version || f.chartsLog != opts.LogLoss || f.chartsScale != opts.Scale {
		body := image.Rect(0, hh, w, h)
		if body.Dy() > 0 {
			if err := f.renderBody(s, body, opts); err != nil {
				return nil, err
			}
		}
		f.chartsVersion, f.chartsLog, f.chartsScale, f.chartsValid = s.Version, opts.LogLoss, opts.Scale, true
	}
	header := newCanvas(w, hh, opts.Scale, colorBackground)
	drawHeader(header.dc, s, opts)
	stddraw.Draw(f.img, image.Rect(0, 0, w, hh), header.img, image.Point{}, stddraw.Src)
	return f.img, nil
}

// canvas is a gonum canvas over a new image of a given pixel size.
type canvas struct {
	img image.Image
	dc  draw.Canvas
	px  func(float64) vg.Length // window coordinates to canvas lengths
}

func newCanvas(w, h int, scale float64, bg color.Color) canvas {
	dpi := max(1, int(math.Round(plot.DPI*scale)))
	c := vgimg.NewWith(vgimg.UseWH(vg.Length(w)*vg.Inch/vg.Length(dpi), vg.Length(h)*vg.Inch/vg.Length(dpi)),
		vgimg.UseDPI(dpi), vgimg.UseBackgroundColor(bg))
	px := func(v float64) vg.Length { return vg.Length(v) * vg.Inch / plot.DPI }
	return canvas{img: c.Image(), dc: draw.New(c), px: px}
}

// renderBody draws the charts and the kept-fraction strip into rect of f.img.
func (f *Frame) renderBody(s Snapshot, rect image.Rectangle, opts FrameOptions) error {
	c := newCanvas(rect.Dx(), rect.Dy(), opts.Scale, color.White)
	sh := stripHeight(opts.Scale)
	if rect.Dy() > 3*sh {
		strip := draw.Crop(c.dc, 0, 0, 0, -(c.dc.Max.Y - c.dc.Min.Y - c.px(float64(sh)/opts.Scale)))
		drawStrip(strip, c.px, s)
		c.dc = draw.Crop(c.dc, 0, 0, c.px(float64(sh)/opts.Scale), 0)
	}
	drawCharts(c.dc, s.Records, plot.Options{LogLoss: opts.LogLoss})
	stddraw.Draw(f.img, rect, c.img, image.Point{}, stddraw.Src)
	return nil
}

// chartTile is one chart's place in a 3 x 2 grid (column, row, columns
// spanned).
type chartTile struct {
	kind          plot.Chart
	col, row, len int
}

var chartGrid = []chartTile{
	{plot.ChartLoss, 0, 0, 1}, {plot.ChartLR, 1, 0, 1}, {plot.ChartFLOPs, 2, 0, 1},
	{plot.ChartThroughput, 0, 1, 1}, {plot.ChartSparsity, 1, 1, 2},
}

// ChartRect is where a chart lies in a frame of w x h pixels at scale, for
// tests that look at pixels.
func ChartRect(kind plot.Chart, w, h int, scale float64) image.Rectangle {
	top := headerHeight(scale)
	bottom := h
	if h-top > 3*stripHeight(scale) {
		bottom -= stripHeight(scale)
	}
	for _, t := range chartGrid {
		if t.kind == kind {
			x0, x1 := t.col*w/3, (t.col+t.len)*w/3
			y0 := top + t.row*(bottom-top)/2
			y1 := top + (t.row+1)*(bottom-top)/2
			return image.Rect(x0, y0, x1, y1)
		}
	}
	return image.Rectangle{}
}

// drawCharts tiles the charts over c; a chart that cannot be drawn (a tile
// too small, say) shows its error instead.
func drawCharts(c draw.Canvas, recs []plot.Record, opts plot.Options) {
	width, height := c.Max.X-c.Min.X, c.Max.Y-c.Min.Y
	for _, t := range chartGrid {
		left := c.Min.X + width*vg.Length(t.col)/3
		right := c.Min.X + width*vg.Length(t.col+t.len)/3
		// Rows count from the top; gonum's y axis points up.
		top := c.Max.Y - height*vg.Length(t.row)/2
		bottom := c.Max.Y - height*vg.Length(t.row+1)/2
		tile := draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{Min: vg.Point{X: left, Y: bottom}, Max: vg.Point{X: right, Y: top}}}
		if err := plot.Draw(tile, t.kind, recs, opts); err != nil {
			tile.SetColor(color.White)
			tile.Fill(tile.Rectangle.Path())
			sty := textStyle("Sans", fontSize, colorAlert)
			tile.FillText(sty, vg.Point{X: left + 8, Y: top - 16}, err.Error())
		}
	}
}

func textStyle(variant string, size float64, col color.Color) draw.TextStyle {
	return text.Style{
		Color:   col,
		Font:    font.Font{Typeface: "Liberation", Variant: font.Variant(variant), Size: vg.Points(size)},
		XAlign:  draw.XLeft,
		YAlign:  draw.YBottom,
		Handler: gplot.DefaultTextHandler,
	}
}

// drawHeader writes the status lines: progress and ETA, the newest figures,
// the adapter, model and run directory, and the keys.
func drawHeader(c draw.Canvas, s Snapshot, opts FrameOptions) {
	px := func(v float64) vg.Length { return vg.Length(v) * vg.Inch / plot.DPI }
	lines := headerText(s, opts)
	for i, l := range lines {
		y := c.Max.Y - px(headerPadding+float64(i+1)*lineHeight-4)
		col := colorText
		if i == len(lines)-1 {
			col = colorDim
		}
		if l.alert {
			col = colorAlert
		}
		c.FillText(textStyle(l.variant, fontSize, col), vg.Point{X: c.Min.X + px(8), Y: y}, l.text)
	}
}

type headerLine struct {
	text    string
	variant string
	alert   bool
}

// headerText is the status lines' text.
func headerText(s Snapshot, opts FrameOptions) []headerLine {
	var progress strings.Builder
	switch {
	case !s.Started:
		progress.WriteString("loading the model and the data ...")
	case s.SVDTotal > 0 && s.SVDDone < s.SVDTotal && len(s.Records) == 0:
		fmt.Fprintf(&progress, "SVD estimator: %d of %d factors", s.SVDDone, s.SVDTotal)
	default:
		pct := 0.0
		if s.Total > 0 {
			pct = 100 * float64(s.Step) / float64(s.Total)
		}
		fmt.Fprintf(&progress, "step %d / %d (%.1f %%)   epoch %.2f   elapsed %s   ETA %s", s.Step, s.Total, pct, s.Epoch,
			durationString(s.Elapsed), etaString(s.ETA))
	}
	alert := false
	switch {
	case opts.Stopping:
		progress.WriteString("   STOPPING: finishing the step, writing a checkpoint")
		alert = true
	case s.Paused:
		progress.WriteString("   PAUSED (p resumes)")
		alert = true
	case s.SavePending:
		progress.WriteString("   checkpoint requested")
	}
	if s.Checkpoint != "" {
		progress.WriteString("   last checkpoint: " + s.Checkpoint)
	}

	figures := "no step logged yet"
	if r := s.Last; r.Step > 0 {
		figures = fmt.Sprintf("loss %.4f", r.Loss)
		if s.LastEval != nil {
			figures += fmt.Sprintf("   eval loss %.4f", *s.LastEval)
		}
		figures += fmt.Sprintf("   lr %.3g   %.0f tokens/s   %.1f ms/step   FLOPs sparse/dense %.3f", r.LR, r.TokensPerS, r.MSPerStep, r.FLOPsRatio)
		if r.PeakBytes > 0 {
			figures += fmt.Sprintf("   GPU peak %.1f MiB", float64(r.PeakBytes)/(1<<20))
		}
		switch {
		case r.Sparse:
			figures += " (sparse)"
		case s.SparseFrom > 0:
			figures += fmt.Sprintf(" (dense warm-up until step %d)", s.SparseFrom-1)
		default:
			figures += " (dense)"
		}
	}
	if s.Note != "" && len(s.Records) == 0 {
		figures = s.Note
	}

	where := "run " + s.RunDir
	if s.Started {
		where = fmt.Sprintf("adapter %s, %s   model %s   run %s", s.Adapter, s.Backend, s.Model, s.RunDir)
	}
	scale := "linear"
	if opts.LogLoss {
		scale = "log"
	}
	keys := fmt.Sprintf("keys: s save a checkpoint   p pause/resume   l loss axis (now %s)   q stop (checkpoint, exit)", scale)
	return []headerLine{{progress.String(), "Sans", alert}, {figures, "Mono", false}, {where, "Sans", false}, {keys, "Sans", false}}
}

func etaString(d time.Duration) string {
	if d < 0 {
		return "--"
	}
	return durationString(d)
}

func durationString(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
}

// drawStrip draws the newest per-layer kept fractions: one row of cells for
// the FFN and one for attention, each cell filled to its fraction.
func drawStrip(c draw.Canvas, px func(float64) vg.Length, s Snapshot) {
	c.SetColor(colorBackground)
	c.Fill(c.Rectangle.Path())
	var mlp, attn []float64
	step := 0
	for i := len(s.Records) - 1; i >= 0; i-- {
		if r := s.Records[i]; len(r.KeptMLP) > 0 || len(r.KeptAttn) > 0 {
			mlp, attn, step = r.KeptMLP, r.KeptAttn, r.Step
			break
		}
	}
	layers := max(len(mlp), len(attn))
	title := "kept channels per layer: no step logged yet"
	if layers > 0 {
		title = fmt.Sprintf("kept channels per layer at step %d (FFN above, attention below; 100 %% = dense)", step)
	}
	top := c.Max.Y - px(headerPadding)
	c.FillText(textStyle("Sans", fontSize, colorText), vg.Point{X: c.Min.X + px(8), Y: top - px(stripTitleH) + px(4)}, title)
	if layers == 0 {
		return
	}
	labelW := px(80)
	left := c.Min.X + px(8)
	cellW := (c.Max.X - px(8) - left - labelW) / vg.Length(layers)
	for row, part := range []struct {
		name string
		kept []float64
		col  color.Color
	}{{"FFN", mlp, colorMLP}, {"attention", attn, colorAttn}} {
		rowTop := top - px(stripTitleH) - px(stripRowH)*vg.Length(row)
		rowBottom := rowTop - px(stripRowH) + px(2)
		c.FillText(textStyle("Sans", fontSize, colorText), vg.Point{X: left, Y: rowBottom + px(1)}, part.name)
		for i := range layers {
			x0 := left + labelW + cellW*vg.Length(i)
			x1 := x0 + cellW - px(2)
			fillRect(c, x0, rowBottom, x1, rowTop, colorCell)
			if i >= len(part.kept) {
				continue
			}
			k := math.Min(1, math.Max(0, part.kept[i]))
			fillRect(c, x0, rowBottom, x0+(x1-x0)*vg.Length(k), rowTop, part.col)
			label := fmt.Sprintf("%.0f%%", 100*k)
			sty := textStyle("Sans", fontSize-1.5, color.White)
			if k < 0.5 {
				sty.Color = colorText
			}
			if sty.Width(label)+px(4) < x1-x0 {
				c.FillText(sty, vg.Point{X: x0 + px(3), Y: rowBottom + px(1)}, label)
			}
		}
	}
}

func fillRect(c draw.Canvas, x0, y0, x1, y1 vg.Length, col color.Color) {
	c.FillPolygon(col, []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}})
}
