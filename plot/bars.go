package plot

import (
	"errors"
	"fmt"
	"image"
	"math"
	"strconv"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// BarSeries is one series of a grouped bar chart: one value per group, NaN
// where the series has no bar in that group.
type BarSeries struct {
	Name   string
	Values []float64
}

// GroupedBars is a bar chart with one group of bars per category (a benchmark
// shape) and one bar per series (an adapter) in each group.
type GroupedBars struct {
	Title, YLabel string
	Groups        []string
	Series        []BarSeries
}

// Render draws the chart into a new w x h image.
func (g GroupedBars) Render(w, h int) (img *image.RGBA, err error) {
	if len(g.Groups) == 0 || len(g.Series) == 0 {
		return nil, errors.New("bar chart: no groups or no series")
	}
	if w < 64 || h < 64 {
		return nil, fmt.Errorf("bar chart: size %dx%d is too small (want at least 64x64 pixels)", w, h)
	}
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("drawing the bar chart: %v", r)
		}
	}()
	p := gplot.New()
	p.Title.Text = g.Title
	p.Y.Label.Text = g.YLabel
	p.Legend.Top = true
	p.Y.Tick.Marker = niceTicks{}
	p.Add(plotter.NewGrid())
	useSans(p)
	p.NominalX(g.Groups...)
	// NominalX pads the y axis by half the first label so that it cannot
	// overhang the axis; instead, widen the x range until the outer labels fit
	// beside their groups. Bar widths are canvas lengths, not data units: size
	// them from the slot a group gets, 80 % of it shared among the series.
	p.Y.Padding = 0
	dataWidth := pixels(w) - 2*figurePadding - vg.Points(60) // less the y axis, about
	first := p.X.Tick.Label.Width(g.Groups[0]) / 2
	last := p.X.Tick.Label.Width(g.Groups[len(g.Groups)-1]) / 2
	left, right := 0.5, 0.5
	for range 4 {
		slot := dataWidth / vg.Length(float64(len(g.Groups)-1)+left+right)
		left = math.Max(0.5, float64(first/slot)+0.05)
		right = math.Max(0.5, float64(last/slot)+0.05)
	}
	groupSlot := dataWidth / vg.Length(float64(len(g.Groups)-1)+left+right)
	barWidth := groupSlot * 0.8 / vg.Length(len(g.Series))
	top := 0.0
	for i, s := range g.Series {
		if len(s.Values) != len(g.Groups) {
			return nil, fmt.Errorf("bar chart: series %q has %d values for %d groups", s.Name, len(s.Values), len(g.Groups))
		}
		values := make(plotter.Values, len(s.Values))
		for j, v := range s.Values {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				continue // no bar
			}
			values[j] = v
			top = math.Max(top, v)
		}
		bars, err := plotter.NewBarChart(values, barWidth)
		if err != nil {
			return nil, fmt.Errorf("bar chart: series %q: %w", s.Name, err)
		}
		bars.Color = seriesColor(i)
		bars.LineStyle.Width = 0
		bars.Offset = (vg.Length(i) - vg.Length(len(g.Series)-1)/2) * barWidth
		p.Add(withoutGlyphBoxes{bars})
		p.Legend.Add(s.Name, bars)
		// The value above each bar, so that bars too short to see still read.
		var at plotter.XYLabels
		for j, v := range values {
			if v > 0 {
				at.XYs = append(at.XYs, plotter.XY{X: float64(j), Y: v})
				at.Labels = append(at.Labels, strconv.FormatFloat(v, 'g', 3, 64))
			}
		}
		if len(at.XYs) > 0 {
			labels, err := plotter.NewLabels(at)
			if err != nil {
				return nil, fmt.Errorf("bar chart: series %q: %w", s.Name, err)
			}
			for k := range labels.TextStyle {
				labels.TextStyle[k].XAlign = draw.XCenter
				labels.TextStyle[k].Font.Variant = "Sans"
				labels.TextStyle[k].Font.Size = vg.Points(8)
			}
			labels.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
			p.Add(withoutGlyphBoxes{labels})
		}
	}
	if len(g.Groups) > 6 {
		p.X.Tick.Label.Rotation = math.Pi / 9
		p.X.Tick.Label.XAlign = draw.XRight
		p.X.Tick.Label.YAlign = draw.YTop
	}
	p.X.Min, p.X.Max = -left, float64(len(g.Groups)-1)+right
	p.Y.Min = 0
	// Room above the tallest bar for the legend.
	p.Y.Max = math.Max(top, 1e-12) * (1.15 + 0.08*float64(len(g.Series)))
	c := vgimg.NewWith(vgimg.UseWH(pixels(w), pixels(h)), vgimg.UseDPI(DPI))
	dc := draw.New(c)
	p.Draw(draw.Crop(dc, figurePadding, -figurePadding, figurePadding, -figurePadding))
	rgba, ok := c.Image().(*image.RGBA)
	if !ok {
		return nil, fmt.Errorf("bar chart: renderer made a %T, not an *image.RGBA", c.Image())
	}
	return rgba, nil
}

// withoutGlyphBoxes hides a plotter's glyph boxes. gonum pads the data area so
// that glyph boxes fit, but estimates the padding before the area is known,
// which leaves a wide empty margin beside bars; the axis ranges set in Render
// already leave room for every bar and value label.
type withoutGlyphBoxes struct {
	gplot.Plotter
}

func (w withoutGlyphBoxes) DataRange() (xmin, xmax, ymin, ymax float64) {
	if dr, ok := w.Plotter.(gplot.DataRanger); ok {
		return dr.DataRange()
	}
	return math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
}
