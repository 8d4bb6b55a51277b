package plot

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// ComparedRun is one run of a comparison chart: its metrics records (none for
// a model that was only evaluated, such as the base model) and its held-out
// accuracy with a confidence interval (NaN when it has none).
type ComparedRun struct {
	Name                   string
	Records                []Record
	Accuracy               float64
	AccuracyLo, AccuracyHi float64
}

// ComparisonWidth and ComparisonHeight are the comparison chart's PNG size in pixels: four panels in
// a 2 x 2 grid.
const (
	ComparisonWidth  = 1100
	ComparisonHeight = 800
)

// RenderComparison draws runs side by side into a new w x h image: training
// loss against the optimizer step and against training time (the sum of the
// logged ms/step over the steps, evaluations left out), held-out accuracy
// with its interval, and the step time against the step. Each run keeps its
// color in every panel.
func RenderComparison(runs []ComparedRun, w, h int) (img *image.RGBA, err error) {
	if len(runs) == 0 {
		return nil, errors.New("comparison chart: no runs")
	}
	if w < 128 || h < 128 {
		return nil, fmt.Errorf("comparison chart: size %dx%d is too small (want at least 128x128 pixels)", w, h)
	}
	defer func() {
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("drawing the comparison chart: %v", r)
		}
	}()
	panels, err := comparisonPanels(runs)
	if err != nil {
		return nil, err
	}
	c := vgimg.NewWith(vgimg.UseWH(pixels(w), pixels(h)), vgimg.UseDPI(DPI))
	dc := draw.New(c)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	dc = draw.Crop(dc, figurePadding, -figurePadding, figurePadding, -figurePadding)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: 4 * figurePadding, PadY: 3 * figurePadding}
	canvases := gplot.Align([][]*gplot.Plot{{panels[0], panels[1]}, {panels[2], panels[3]}}, tiles, dc)
	for i, p := range panels {
		if math.IsInf(p.X.Min, 1) {
			p.X.Min, p.X.Max = 0, 1
		}
		if math.IsInf(p.Y.Min, 1) {
			p.Y.Min, p.Y.Max = 0, 1
		}
		widenFlatRange(&p.Y)
		p.Draw(canvases[i/2][i%2])
	}
	out, ok := c.Image().(*image.RGBA)
	if !ok {
		return nil, fmt.Errorf("comparison chart: renderer made a %T, not an *image.RGBA", c.Image())
	}
	return out, nil
}

// trainingTime is the running total of training time in seconds at each
// logged training step: each record's ms/step times the steps since the
// record before it.
func trainingTime(recs []Record) plotter.XYs {
	var xys plotter.XYs
	prevStep, total := 0, 0.0
	for _, r := range recs {
		if !r.HasTrain() || math.IsNaN(r.MSPerStep) || math.IsInf(r.MSPerStep, 0) || r.Step <= prevStep {
			continue
		}
		total += r.MSPerStep * float64(r.Step-prevStep) / 1e3
		prevStep = r.Step
		xys = append(xys, plotter.XY{X: total, Y: r.Loss})
	}
	return xys
}

func comparisonPanels(runs []ComparedRun) ([]*gplot.Plot, error) {
	byStep := newPlot("Training loss", stepAxisLabel, "loss")
	byTime := newPlot("Training loss against time", "training time (s)", "loss")
	byTime.X.Tick.Marker = niceTicks{}
	acc := newPlot("Exact match on the held-out examples", "", "exact match (%)")
	stepTime := newPlot("Step time", stepAxisLabel, "ms/step")
	var names []string
	for i, run := range runs {
		c := seriesColor(i)
		loss := points(run.Records, func(r Record) float64 { return r.Loss }, nil)
		if err := addSeries(byStep, run.Name, loss, c, false); err != nil {
			return nil, err
		}
		if err := addSeries(byTime, run.Name, trainingTime(run.Records), c, false); err != nil {
			return nil, err
		}
		ms := points(run.Records, func(r Record) float64 {
			if !r.HasTrain() {
				return math.NaN()
			}
			return r.MSPerStep
		}, nil)
		if err := addSeries(stepTime, run.Name, ms, c, false); err != nil {
			return nil, err
		}
		names = append(names, run.Name)
	}
	// One bar per run, in the run's color, with its interval as error bars.
	acc.NominalX(names...)
	acc.X.Tick.Marker = gplot.ConstantTicks(nominalTicks(names))
	for i, run := range runs {
		if math.IsNaN(run.Accuracy) {
			continue
		}
		bar, err := plotter.NewBarChart(plotter.Values{100 * run.Accuracy}, vg.Points(40))
		if err != nil {
			return nil, fmt.Errorf("accuracy of %s: %w", run.Name, err)
		}
		bar.XMin = float64(i)
		bar.Color = seriesColor(i)
		bar.LineStyle.Width = 0
		acc.Add(bar)
		if !math.IsNaN(run.AccuracyLo) && !math.IsNaN(run.AccuracyHi) {
			errs := accuracyInterval{x: float64(i), y: 100 * run.Accuracy, lo: 100 * run.AccuracyLo, hi: 100 * run.AccuracyHi}
			bars, err := plotter.NewYErrorBars(errs)
			if err != nil {
				return nil, fmt.Errorf("accuracy interval of %s: %w", run.Name, err)
			}
			acc.Add(bars)
		}
	}
	// 0 at the bottom so that heights compare as ratios; room above for the legend.
	if stepTime.Y.Max > 0 && !math.IsInf(stepTime.Y.Max, 0) {
		stepTime.Y.Min, stepTime.Y.Max = 0, 1.3*stepTime.Y.Max
	}
	byTime.X.Min = 0 // time from the start of training, not from the first log
	acc.Y.Min = 0
	acc.Y.Max = math.Max(acc.Y.Max, 10)
	acc.X.Min, acc.X.Max = -0.6, float64(len(runs))-0.4
	return []*gplot.Plot{byStep, byTime, acc, stepTime}, nil
}

// nominalTicks labels 0..len(names)-1 with the names.
func nominalTicks(names []string) []gplot.Tick {
	ticks := make([]gplot.Tick, len(names))
	for i, n := range names {
		ticks[i] = gplot.Tick{Value: float64(i), Label: n}
	}
	return ticks
}

// accuracyInterval is one bar's confidence interval, as plotter.YErrorBars
// wants it.
type accuracyInterval struct{ x, y, lo, hi float64 }

func (a accuracyInterval) Len() int                      { return 1 }
func (a accuracyInterval) XY(int) (float64, float64)     { return a.x, a.y }
func (a accuracyInterval) YError(int) (float64, float64) { return a.y - a.lo, a.hi - a.y }
