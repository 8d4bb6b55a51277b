package plot

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// syntheticRun is a short plausible run: loss decaying with noise, linear
// warm-up then decay of the learning rate, a dense warm-up of denseSteps
// before sparsity starts, evaluation every tenth step and one eval-only line.
func syntheticRun(steps, denseSteps, layers int) []Record {
	var recs []Record
	nan := math.NaN()
	for s := 1; s <= steps; s++ {
		r := Record{Step: s, Epoch: float64(s) / 20, Loss: 0.8 + 1.5*math.Exp(-float64(s)/12) + 0.03*math.Sin(float64(s)),
			LR: 2e-4 * math.Min(float64(s-1)/4, float64(steps-s+1)/float64(steps-4)), GradNorm: 1.5, Tokens: 2048 * s, // a running total, as the trainer logs it
			EvalLoss: nan, EvalAccuracy: nan}
		r.Sparse = s > denseSteps
		r.KeptMLP, r.KeptAttn = make([]float64, layers), make([]float64, layers)
		r.FLOPsRatio, r.TokensPerS = 1, 800+float64(s%3)
		for l := range layers {
			r.KeptMLP[l], r.KeptAttn[l] = 1, 1
			if r.Sparse && l >= 2 {
				r.KeptMLP[l], r.KeptAttn[l] = 0.01+0.02*float64(l), 0.25
			}
		}
		if r.Sparse {
			r.FLOPsRatio, r.TokensPerS = 0.55, 1200+float64(s%5)
		}
		r.MSPerStep = 2048 / r.TokensPerS * 1000
		if s%10 == 0 {
			r.EvalLoss, r.EvalAccuracy = 1+math.Exp(-float64(s)/14), 0.3+0.004*float64(s)
		}
		recs = append(recs, r)
	}
	evalOnly := Record{Step: steps, Epoch: nan, Loss: nan, LR: nan, GradNorm: nan, TokensPerS: nan, MSPerStep: nan,
		FLOPsRatio: nan, EvalLoss: 0.95, EvalAccuracy: 0.5}
	return append(recs, evalOnly)
}

// near reports whether two colors are within tol in every channel.
func near(a, b color.Color, tol int) bool {
	ar, ag, ab, _ := a.RGBA()
	br, bg, bb, _ := b.RGBA()
	d := func(x, y uint32) int { return int(math.Abs(float64(x>>8) - float64(y>>8))) }
	return d(ar, br) <= tol && d(ag, bg) <= tol && d(ab, bb) <= tol
}

// countPixels counts the pixels of the inner part of img (a margin of 8 % cut
// off each side: the plot areas) for which match holds.
func countPixels(img image.Image, match func(color.Color) bool) int {
	b := img.Bounds()
	mx, my := b.Dx()*8/100, b.Dy()*8/100
	n := 0
	for y := b.Min.Y + my; y < b.Max.Y-my; y++ {
		for x := b.Min.X + mx; x < b.Max.X-mx; x++ {
			if match(img.At(x, y)) {
				n++
			}
		}
	}
	return n
}

// inkPixels counts pixels that are neither the white background nor a shade
// of the thin gray grid lines.
func inkPixels(img image.Image) int {
	return countPixels(img, func(c color.Color) bool {
		r, g, b, _ := c.RGBA()
		gray := r == g && g == b
		return !(gray && r>>8 >= 0x70)
	})
}

func colorPixels(img image.Image, want color.Color) int {
	return countPixels(img, func(c color.Color) bool { return near(c, want, 12) })
}

func TestPlotRenderEveryChart(t *testing.T) {
	recs := syntheticRun(40, 8, 6)
	// Colors each chart must show: its series, or both ends of the heat map.
	dense, _ := keptColorMap()
	hi, _ := dense.At(1)
	mid, _ := dense.At(0.25)
	wantColors := map[Chart][]color.Color{
		ChartLoss:       {colorBlue, colorOrange},
		ChartLR:         {colorBlue},
		ChartThroughput: {colorBlue},
		ChartFLOPs:      {colorRed, colorBlue},
		ChartSparsity:   {hi, mid},
	}
	for _, kind := range AllCharts() {
		for _, size := range [][2]int{{640, 400}, {1000, 700}} {
			img, err := Render(kind, recs, size[0], size[1])
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			if img.Bounds().Dx() != size[0] || img.Bounds().Dy() != size[1] {
				t.Errorf("%s: image %v, want %dx%d", kind, img.Bounds(), size[0], size[1])
			}
			area := size[0] * size[1]
			if ink := inkPixels(img); ink < area/1000 {
				t.Errorf("%s %dx%d: only %d ink pixels in the plot area", kind, size[0], size[1], ink)
			}
			for _, c := range wantColors[kind] {
				if n := colorPixels(img, c); n < 60 {
					t.Errorf("%s %dx%d: %d pixels of color %v, want the series drawn", kind, size[0], size[1], n, c)
				}
			}
		}
	}
}

func TestPlotRenderEdgeCases(t *testing.T) {
	one := syntheticRun(1, 0, 2)[:1]
	// No records yet (a live window's first frame), one record, log axis over a
	// zero loss: drawn without error.
	zeroLoss := syntheticRun(5, 2, 2)
	zeroLoss[2].Loss = 0
	for _, c := range []struct {
		name string
		recs []Record
		opts Options
	}{{"empty", nil, Options{}}, {"empty log", nil, Options{LogLoss: true}}, {"one record", one, Options{LogLoss: true}},
		{"zero loss on log axis", zeroLoss, Options{LogLoss: true}}} {
		for _, kind := range AllCharts() {
			img, err := RenderWith(kind, c.recs, 500, 300, c.opts)
			if err != nil {
				t.Errorf("%s, %s: %v", c.name, kind, err)
				continue
			}
			if inkPixels(img) == 0 {
				t.Errorf("%s, %s: blank image", c.name, kind)
			}
		}
	}
	if img, err := Render(ChartLoss, one, 500, 300); err == nil && colorPixels(img, colorBlue) == 0 {
		t.Errorf("a single training step is not marked")
	}
	if _, err := Render(ChartLoss, one, 10, 10); err == nil {
		t.Errorf("a 10x10 chart was accepted")
	}
	if _, err := Render(Chart(99), one, 500, 300); err == nil {
		t.Errorf("an unknown chart was accepted")
	}
}

func TestPlotKeptGridResamplesLongRuns(t *testing.T) {
	recs := syntheticRun(1000, 100, 3)
	g, ok := newKeptGrid(recs, func(r Record) []float64 { return r.KeptMLP })
	cols, rows := g.Dims()
	if !ok || cols != maxHeatColumns || rows != 3 {
		t.Fatalf("grid %dx%d, want %dx3", cols, rows, maxHeatColumns)
	}
	if g.X(0) != 1 || g.X(cols-1) != 1000 {
		t.Errorf("columns span steps %g..%g, want 1..1000", g.X(0), g.X(cols-1))
	}
	for c := range cols {
		// Independent check: the latest record at or before the column's step.
		step := int(math.Floor(g.X(c) + 1e-9))
		want := recs[step-1].KeptMLP[2]
		if got := g.Z(c, 2); got != want {
			t.Fatalf("column %d (step %g): kept %g, want %g (record of step %d)", c, g.X(c), got, want, step)
		}
	}
	if _, ok := newKeptGrid([]Record{{Step: 1}}, func(r Record) []float64 { return r.KeptMLP }); ok {
		t.Errorf("a grid was made from records without fractions")
	}
}

func TestPlotTicks(t *testing.T) {
	for _, c := range []struct {
		lo, hi  float64
		integer bool
	}{{1, 40, true}, {0.5, 8.5, true}, {0, 2e-4, false}, {0.87, 2.16, false}, {-3, 1234, false}, {1, 2, true},
		// Extreme magnitudes (a diverged loss, a tiny learning rate): short labels.
		{5e307, 1.5e308, false}, {1e11, 3e11, false}, {0, 3e-9, false}, {-2e-8, -1e-8, false}} {
		var labeled []float64
		for _, tk := range (niceTicks{integer: c.integer}).Ticks(c.lo, c.hi) {
			if slack := 1e-12 * math.Max(1, math.Max(math.Abs(c.lo), math.Abs(c.hi))); tk.Value < c.lo-slack || tk.Value > c.hi+slack {
				t.Errorf("%v: tick %g outside the range", c, tk.Value)
			}
			if tk.Label == "" {
				continue
			}
			if len(tk.Label) > 12 {
				t.Errorf("%v: label %q is too long to read", c, tk.Label)
			}
			v, err := strconv.ParseFloat(tk.Label, 64)
			if err != nil || math.Abs(v-tk.Value) > 1e-9*math.Max(1, math.Abs(v)) {
				t.Errorf("%v: label %q for tick %g", c, tk.Label, tk.Value)
			}
			if c.integer && v != math.Round(v) {
				t.Errorf("%v: label %q on an integer axis", c, tk.Label)
			}
			labeled = append(labeled, tk.Value)
		}
		if len(labeled) < 2 || len(labeled) > 8 {
			t.Errorf("%v: %d labels %v, want 2 to 8", c, len(labeled), labeled)
			continue
		}
		step := labeled[1] - labeled[0]
		mant := step / math.Pow(10, math.Floor(math.Log10(step)+1e-9))
		if math.Abs(mant-1) > 1e-6 && math.Abs(mant-2) > 1e-6 && math.Abs(mant-5) > 1e-6 {
			t.Errorf("%v: labels %v step %g, want 1, 2 or 5 times a power of ten", c, labeled, step)
		}
	}
	ticks := logTicks{}.Ticks(0.01, 30)
	var labels []string
	for _, tk := range ticks {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	if got := strings.Join(labels, " "); got != "0.01 0.02 0.05 0.1 0.2 0.5 1 2 5 10 20" {
		t.Errorf("log ticks 0.01..30: labels %q", got)
	}
}

func TestPlotWriteRun(t *testing.T) {
	dir := t.TempDir()
	recs := syntheticRun(30, 5, 4)
	config := "model: tiny\nlr: 0.0002   \n"
	if err := os.WriteFile(filepath.Join(dir, ConfigFileName), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	paths, err := WriteRun(dir, recs)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	if got := strings.Join(names, " "); got != "loss.png lr.png throughput.png flops.png sparsity.png summary.md" {
		t.Fatalf("wrote %s", got)
	}
	for _, kind := range AllCharts() {
		raw, err := os.ReadFile(filepath.Join(dir, kind.FileName()))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: %v", kind.FileName(), err)
		}
		w, h := kind.DefaultSize()
		if img.Bounds().Dx() != w || img.Bounds().Dy() != h {
			t.Errorf("%s: %v, want %dx%d", kind.FileName(), img.Bounds(), w, h)
		}
		if ink := inkPixels(img); ink < w*h/1000 {
			t.Errorf("%s: only %d ink pixels", kind.FileName(), ink)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}

	raw, err := os.ReadFile(filepath.Join(dir, SummaryFileName))
	if err != nil {
		t.Fatal(err)
	}
	summary := string(raw)
	// Expected figures, computed here from the records directly.
	minLoss, minStep, sumTPS, sumMS, sumRatio, n, sumSparse, nSparse := math.Inf(1), 0, 0.0, 0.0, 0.0, 0, 0.0, 0
	for _, r := range recs[:30] {
		if r.Loss < minLoss {
			minLoss, minStep = r.Loss, r.Step
		}
		sumTPS, sumMS, sumRatio, n = sumTPS+r.TokensPerS, sumMS+r.MSPerStep, sumRatio+r.FLOPsRatio, n+1
		if r.Sparse {
			sumSparse, nSparse = sumSparse+r.FLOPsRatio, nSparse+1
		}
	}
	for _, want := range []string{
		"| final step | 30 (epoch 1.50) |",
		fmt.Sprintf("| final train loss | %.4f |", recs[29].Loss),
		fmt.Sprintf("| min train loss | %.4f (step %d) |", minLoss, minStep),
		"| final eval loss | 0.9500 (step 30) |",
		fmt.Sprintf("| best eval loss | 0.9500 (step 30) |"),
		fmt.Sprintf("| mean tokens/s | %.1f |", sumTPS/float64(n)),
		fmt.Sprintf("| mean ms/step | %.1f |", sumMS/float64(n)),
		fmt.Sprintf("| mean FLOP ratio (sparse / dense), all steps | %.3f |", sumRatio/float64(n)),
		fmt.Sprintf("| mean FLOP ratio, sparse steps | %.3f |", sumSparse/float64(nSparse)),
		"| logged steps by kind | 5 dense, 25 sparse (sparse from step 6) |",
		fmt.Sprintf("| tokens trained on | %d |", 30*2048),
		"![loss](loss.png)", "![sparsity](sparsity.png)",
		"```yaml\nmodel: tiny\nlr: 0.0002\n```",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
	for i, line := range strings.Split(summary, "\n") {
		if strings.TrimRight(line, " \t") != line {
			t.Errorf("summary.md line %d has trailing spaces: %q", i+1, line)
		}
	}

	// A dense run that logs no per-layer fractions gets no sparsity chart.
	dense := syntheticRun(5, 5, 0)
	for i := range dense {
		dense[i].KeptMLP, dense[i].KeptAttn = nil, nil
	}
	paths, err = WriteRun(t.TempDir(), dense)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if filepath.Base(p) == "sparsity.png" {
			t.Errorf("sparsity chart written for a run without fractions")
		}
	}
	if _, err := WriteRun(t.TempDir(), nil); err == nil {
		t.Errorf("WriteRun without records succeeded")
	}
}

func TestPlotGroupedBars(t *testing.T) {
	chart := GroupedBars{Title: "TFLOP/s", YLabel: "TFLOP/s", Groups: []string{"gemm 4096\ndense", "gemm 4096\ngathered", "step"},
		Series: []BarSeries{{"A", []float64{10, 8, math.NaN()}}, {"B", []float64{30, 25, 2}}}}
	img, err := chart.Render(800, 450)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != 800 || img.Bounds().Dy() != 450 {
		t.Errorf("image %v", img.Bounds())
	}
	a, b := colorPixels(img, seriesColor(0)), colorPixels(img, seriesColor(1))
	if a < 1000 || b < 1000 {
		t.Errorf("bar pixels: A %d, B %d", a, b)
	}
	// B's bars are about three times A's (30+25+2 vs 10+8 tall, the same width).
	if ratio := float64(b) / float64(a); ratio < 2.2 || ratio > 4 {
		t.Errorf("B/A bar area %.2f, want about 3.2", ratio)
	}
	chart.Series[0].Values = chart.Series[0].Values[:2]
	if _, err := chart.Render(800, 450); err == nil {
		t.Errorf("a series with too few values was accepted")
	}
	if _, err := (GroupedBars{}).Render(800, 450); err == nil {
		t.Errorf("an empty chart was accepted")
	}
}

func TestPlotEnvelopeKeepsExtremes(t *testing.T) {
	var xys plotter.XYs
	for i := range 10007 {
		xys = append(xys, plotter.XY{X: float64(i), Y: math.Sin(float64(i)*0.37) + float64(i%97)/50})
	}
	got := envelope(xys, 100)
	if len(got) > 200 || len(got) < 100 {
		t.Fatalf("%d points, want 100 to 200", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].X <= got[i-1].X {
			t.Fatalf("points out of x order at %d", i)
		}
	}
	// Every run of about a hundred input points keeps its own extremes.
	for b := range 100 {
		lo, hi := b*len(xys)/100, (b+1)*len(xys)/100
		wantMin, wantMax := math.Inf(1), math.Inf(-1)
		for _, p := range xys[lo:hi] {
			wantMin, wantMax = math.Min(wantMin, p.Y), math.Max(wantMax, p.Y)
		}
		gotMin, gotMax := math.Inf(1), math.Inf(-1)
		for _, p := range got {
			if p.X >= float64(lo) && p.X < float64(hi) {
				gotMin, gotMax = math.Min(gotMin, p.Y), math.Max(gotMax, p.Y)
			}
		}
		if gotMin != wantMin || gotMax != wantMax {
			t.Fatalf("points %d..%d: kept range [%g, %g], want [%g, %g]", lo, hi, gotMin, gotMax, wantMin, wantMax)
		}
	}
	if short := xys[:50]; len(envelope(short, 100)) != 50 {
		t.Errorf("a short line was thinned")
	}
}

// A window draws frame after frame onto its own canvas: nothing of the former
// frame may show through.
func TestPlotDrawRepaintsTheWholeCanvas(t *testing.T) {
	for _, kind := range AllCharts() {
		c := vgimg.NewWith(vgimg.UseWH(pixels(400), pixels(300)), vgimg.UseDPI(DPI), vgimg.UseBackgroundColor(color.Black))
		if err := Draw(draw.New(c), kind, syntheticRun(12, 3, 4), Options{}); err != nil {
			t.Fatal(err)
		}
		img := c.Image()
		for _, p := range []image.Point{{1, 1}, {398, 1}, {1, 298}, {398, 298}, {200, 1}} {
			if !near(img.At(p.X, p.Y), color.White, 0) {
				t.Errorf("%s: pixel %v is %v after drawing, want white", kind, p, img.At(p.X, p.Y))
			}
		}
	}
}

// A constant series (a constant learning rate) must get an axis around its
// value, not gonum's v-1..v+1, on which 1e-3 reads as 0.
func TestPlotConstantSeriesAxis(t *testing.T) {
	for _, lr := range []float64{1e-3, -2.5e-5, 3e4} {
		recs := syntheticRun(6, 0, 1)
		for i := range recs {
			recs[i].LR = lr
		}
		fig, err := buildFigure(ChartLR, recs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		c := vgimg.NewWith(vgimg.UseWH(pixels(500), pixels(300)), vgimg.UseDPI(DPI))
		fig.draw(draw.New(c))
		y := fig.panels[0].Y
		if !(y.Min < lr && lr < y.Max) || y.Max-y.Min > 2*math.Abs(lr) || (lr > 0 && y.Min <= 0) {
			t.Errorf("constant learning rate %g: y axis %g..%g, want a range around it of its magnitude", lr, y.Min, y.Max)
		}
		labeled := 0
		for _, tick := range y.Tick.Marker.Ticks(y.Min, y.Max) {
			if tick.Label != "" {
				labeled++
			}
		}
		if labeled < 2 {
			t.Errorf("constant learning rate %g: %d labeled ticks on %g..%g, want at least 2", lr, labeled, y.Min, y.Max)
		}
	}
}
