package window

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sparselora/sparselora/plot"
)

// syntheticRun is a snapshot of a run with a dense warm-up of 20 steps, then
// sparse steps keeping 50 % (FFN) and 25 % (attention) of the channels of
// layer 0 and all of layer 1.
func syntheticRun(steps int) Snapshot {
	s := Snapshot{Started: true, Adapter: "llvmpipe (Mesa)", Backend: "Vulkan", Model: "testdata/model", RunDir: "runs/x",
		Step: steps, Total: 2 * steps, SparseFrom: 21, ETA: -1}
	for i := 1; i <= steps; i++ {
		r := plot.Record{Step: i, Loss: 3*math.Exp(-float64(i)/30) + 0.5, LR: 1e-3, TokensPerS: 900, MSPerStep: 40,
			FLOPsRatio: 1, EvalLoss: math.NaN(), EvalAccuracy: math.NaN(), KeptMLP: []float64{1, 1}, KeptAttn: []float64{1, 1}}
		if i > 20 {
			r.Sparse, r.FLOPsRatio = true, 0.6
			r.KeptMLP, r.KeptAttn = []float64{0.5, 1}, []float64{0.25, 1}
		}
		if i%20 == 0 {
			r.EvalLoss = r.Loss + 0.1
		}
		s.Records = append(s.Records, r)
	}
	s.Version = len(s.Records)
	return s
}

// near reports whether c is within tol of want in every channel.
func near(c color.RGBA, want color.RGBA, tol int) bool {
	d := func(a, b uint8) int { return max(int(a)-int(b), int(b)-int(a)) }
	return d(c.R, want.R) <= tol && d(c.G, want.G) <= tol && d(c.B, want.B) <= tol
}

func countPixels(img *image.RGBA, r image.Rectangle, match func(color.RGBA) bool) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if match(img.RGBAAt(x, y)) {
				n++
			}
		}
	}
	return n
}

func dark(c color.RGBA) bool { return int(c.R)+int(c.G)+int(c.B) < 3*0x70 }

func TestFrameDrawsChartsStatusAndStrip(t *testing.T) {
	for _, scale := range []float64{1, 2} {
		w, h := int(1280*scale), int(800*scale)
		var f Frame
		img, err := f.Render(syntheticRun(60), w, h, FrameOptions{Scale: scale})
		if err != nil {
			t.Fatal(err)
		}
		if img.Rect.Dx() != w || img.Rect.Dy() != h {
			t.Fatalf("scale %g: frame %v, want %dx%d", scale, img.Rect, w, h)
		}
		if dir := os.Getenv("SPARSELORA_WINDOW_FRAME_DIR"); dir != "" {
			if err := plot.WritePNG(filepath.Join(dir, fmt.Sprintf("frame-x%g.png", scale)), img); err != nil {
				t.Fatal(err)
			}
		}
		// The loss chart: the train series in its blue.
		loss := ChartRect(plot.ChartLoss, w, h, scale)
		blue := color.RGBA{R: 0x1f, G: 0x77, B: 0xb4}
		if n := countPixels(img, loss, func(c color.RGBA) bool { return near(c, blue, 40) }); n < int(200*scale) {
			t.Errorf("scale %g: %d blue pixels in the loss chart %v, want a drawn line", scale, n, loss)
		}
		// Axis labels and titles: dark pixels in every chart.
		for _, kind := range []plot.Chart{plot.ChartLoss, plot.ChartLR, plot.ChartFLOPs, plot.ChartThroughput, plot.ChartSparsity} {
			r := ChartRect(kind, w, h, scale)
			if n := countPixels(img, r, dark); n < 500 {
				t.Errorf("scale %g: %s chart %v has %d dark pixels: nothing drawn?", scale, kind, r, n)
			}
		}
		// Status lines: text on the header's background.
		header := image.Rect(0, 0, w, headerHeight(scale))
		if n := countPixels(img, header, dark); n < int(2000*scale*scale) {
			t.Errorf("scale %g: %d dark pixels in the status lines, want text", scale, n)
		}
		// The strip: layer 0's FFN cell is blue for half its width, its
		// attention cell orange for a quarter; layer 1's are full.
		strip := image.Rect(0, h-stripHeight(scale), w, h)
		orange := color.RGBA{R: 0xff, G: 0x7f, B: 0x0e}
		rowFill := func(want color.RGBA, row int) []float64 {
			// Scan a line near the top of a row, above the cells' text:
			// the filled share of each cell.
			y := strip.Min.Y + int((headerPadding+stripTitleH+stripRowH*float64(row)+2)*scale)
			var runs []float64
			inCell, filled, cell := false, 0, 0
			for x := strip.Min.X; x < strip.Max.X; x++ {
				c := img.RGBAAt(x, y)
				isCell := !near(c, colorBackground, 4) // cells, their fill, edges and text
				switch {
				case isCell && !inCell:
					inCell, filled, cell = true, 0, 0
					fallthrough
				case isCell:
					cell++
					if near(c, want, 30) {
						filled++
					}
				case inCell:
					inCell = false
					if cell > int(20*scale) {
						runs = append(runs, float64(filled)/float64(cell))
					}
				}
			}
			return runs
		}
		for _, c := range []struct {
			name string
			col  color.RGBA
			row  int
			want []float64
		}{{"FFN", blue, 0, []float64{0.5, 1}}, {"attention", orange, 1, []float64{0.25, 1}}} {
			got := rowFill(c.col, c.row)
			if len(got) != len(c.want) {
				t.Errorf("scale %g: %s strip: %d cells %v, want %d", scale, c.name, len(got), got, len(c.want))
				continue
			}
			for i := range got {
				// Text inside a cell hides a few colored pixels.
				if math.Abs(got[i]-c.want[i]) > 0.12 {
					t.Errorf("scale %g: %s strip cell %d filled %.2f, want %.2f", scale, c.name, i, got[i], c.want[i])
				}
			}
		}
	}
}

func TestFrameWithoutRecordsAndTooSmall(t *testing.T) {
	var f Frame
	img, err := f.Render(Snapshot{RunDir: "runs/x", ETA: -1}, 800, 500, FrameOptions{})
	if err != nil {
		t.Fatalf("first frame (nothing logged yet): %v", err)
	}
	if n := countPixels(img, image.Rect(0, 0, 800, headerHeight(1)), dark); n < 200 {
		t.Errorf("first frame: %d dark pixels in the status lines", n)
	}
	if _, err := f.Render(Snapshot{}, 10, 10, FrameOptions{}); err == nil {
		t.Error("a 10x10 frame did not fail")
	}
}

func TestFrameRedrawsChartsOnlyWhenRecordsChange(t *testing.T) {
	var f Frame
	s := syntheticRun(40)
	img, err := f.Render(s, 900, 600, FrameOptions{})
	if err != nil {
		t.Fatal(err)
	}
	loss := ChartRect(plot.ChartLoss, 900, 600, 1)
	// Paint over the loss chart: the next frame with the same records keeps
	// the paint (charts were not drawn again) ...
	for y := loss.Min.Y; y < loss.Max.Y; y++ {
		for x := loss.Min.X; x < loss.Max.X; x++ {
			img.SetRGBA(x, y, color.RGBA{R: 1, G: 2, B: 3, A: 255})
		}
	}
	painted := func(img *image.RGBA) int {
		return countPixels(img, loss, func(c color.RGBA) bool { return c == color.RGBA{R: 1, G: 2, B: 3, A: 255} })
	}
	s.Step++
	img, err = f.Render(s, 900, 600, FrameOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if painted(img) != loss.Dx()*loss.Dy() {
		t.Error("charts redrawn although no record arrived")
	}
	// ... and a new record, or the log toggle, draws them again.
	s.Version++
	if img, err = f.Render(s, 900, 600, FrameOptions{}); err != nil || painted(img) != 0 {
		t.Errorf("charts not redrawn after a new record (err %v)", err)
	}
}

// BenchmarkFrameCharts is the cost of one chart redraw at the window's
// default size (the window does at most two a second while records arrive).
func BenchmarkFrameCharts(b *testing.B) {
	s := syntheticRun(400)
	var f Frame
	for b.Loop() {
		s.Version++
		if _, err := f.Render(s, 1280, 800, FrameOptions{Scale: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFrameStatus is the cost of a frame whose charts are kept (the
// status lines change four times a second).
func BenchmarkFrameStatus(b *testing.B) {
	s := syntheticRun(400)
	var f Frame
	for b.Loop() {
		s.Step++
		if _, err := f.Render(s, 1280, 800, FrameOptions{Scale: 1}); err != nil {
			b.Fatal(err)
		}
	}
}
