package plot

import (
	"image"
	"math"
	"testing"
)

// quadrantPixels counts the pixels of color want in one quadrant (row, col of
// a 2 x 2 grid) of img.
func quadrantPixels(img *image.RGBA, row, col int, want func(x, y int) bool) int {
	b := img.Bounds()
	w, h := b.Dx()/2, b.Dy()/2
	n := 0
	for y := b.Min.Y + row*h; y < b.Min.Y+(row+1)*h; y++ {
		for x := b.Min.X + col*w; x < b.Min.X+(col+1)*w; x++ {
			if want(x, y) {
				n++
			}
		}
	}
	return n
}

func TestPlotComparisonDrawsEveryRunInEveryPanel(t *testing.T) {
	dense := syntheticRun(60, 60, 3)
	sparse := syntheticRun(60, 6, 3)
	for i := range sparse { // apart from dense's curve, so that neither hides the other
		sparse[i].Loss += 0.4
	}
	runs := []ComparedRun{
		{Name: "base model", Accuracy: 0.02, AccuracyLo: 0, AccuracyHi: 0.05},
		{Name: "dense LoRA", Records: dense, Accuracy: 0.43, AccuracyLo: 0.35, AccuracyHi: 0.51},
		{Name: "SparseLoRA", Records: sparse, Accuracy: 0.42, AccuracyLo: 0.34, AccuracyHi: 0.50},
	}
	img, err := RenderComparison(runs, ComparisonWidth, ComparisonHeight)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != ComparisonWidth || img.Bounds().Dy() != ComparisonHeight {
		t.Fatalf("image %v, want %dx%d", img.Bounds(), ComparisonWidth, ComparisonHeight)
	}
	// Loss by step, loss by time and step time show both trained runs; the
	// accuracy panel shows a bar of every run. Colors are the runs' indices.
	for _, q := range []struct {
		name     string
		row, col int
		runs     []int
	}{{"loss by step", 0, 0, []int{1, 2}}, {"loss by time", 0, 1, []int{1, 2}}, {"exact match", 1, 0, []int{0, 1, 2}}, {"step time", 1, 1, []int{1, 2}}} {
		for _, i := range q.runs {
			c := seriesColor(i)
			if n := quadrantPixels(img, q.row, q.col, func(x, y int) bool { return near(img.At(x, y), c, 12) }); n < 60 {
				t.Errorf("%s: %d pixels of %s's color, want its series drawn", q.name, n, runs[i].Name)
			}
		}
	}
	// The base model has no records: its color stays out of the line panels.
	if n := quadrantPixels(img, 0, 0, func(x, y int) bool { return near(img.At(x, y), seriesColor(0), 12) }); n > 20 {
		t.Errorf("loss by step: %d pixels of the base model's color, which has no loss", n)
	}
}

func TestPlotTrainingTimeSumsStepTimes(t *testing.T) {
	nan := math.NaN()
	recs := []Record{
		{Step: 10, Loss: 3, MSPerStep: 100, EvalLoss: nan, EvalAccuracy: nan},
		{Step: 20, Loss: 2, MSPerStep: 50, EvalLoss: nan, EvalAccuracy: nan},
		{Step: 20, Loss: nan, MSPerStep: nan, EvalLoss: 2.5, EvalAccuracy: 0.4}, // evaluation only
		{Step: 25, Loss: 1, MSPerStep: 200, EvalLoss: nan, EvalAccuracy: nan},
	}
	got := trainingTime(recs)
	want := [][2]float64{{1, 3}, {1.5, 2}, {2.5, 1}} // 10*0.1 s, +10*0.05 s, +5*0.2 s
	if len(got) != len(want) {
		t.Fatalf("%d points, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		if math.Abs(got[i].X-w[0]) > 1e-12 || got[i].Y != w[1] {
			t.Errorf("point %d: (%g, %g), want (%g, %g)", i, got[i].X, got[i].Y, w[0], w[1])
		}
	}
}

func TestPlotComparisonRejectsBadInput(t *testing.T) {
	if _, err := RenderComparison(nil, 800, 600); err == nil {
		t.Errorf("a comparison of no runs was accepted")
	}
	if _, err := RenderComparison([]ComparedRun{{Name: "a", Accuracy: math.NaN()}}, 50, 50); err == nil {
		t.Errorf("a 50x50 chart was accepted")
	}
	// A run without accuracy or records (an interrupted run) is drawn without error.
	if _, err := RenderComparison([]ComparedRun{{Name: "a", Accuracy: math.NaN(), AccuracyLo: math.NaN(), AccuracyHi: math.NaN()}}, 800, 600); err != nil {
		t.Errorf("a run without figures: %v", err)
	}
}
