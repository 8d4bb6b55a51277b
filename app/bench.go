package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) == 0 {
			benchUsage(stderr)
			return errUsage
		}
		benchUsage(stdout)
		return nil
	}
	switch args[0] {
	case "gemm":
		return runBenchGemm(ctx, args[1:], stdout, stderr)
	case "step":
		return runBenchStep(ctx, args[1:], stdout, stderr)
	case "report":
		return runBenchReport(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "sparselora bench: unknown benchmark %q\n\n", args[0])
	benchUsage(stderr)
	return errUsage
}

// benchUsage lists the bench subcommands.
func benchUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: sparselora bench <gemm|step|report> [flags]\n\n"+
		"  gemm    dense and gathered GEMMs\n"+
		"  step    one dense-LoRA and one SparseLoRA training step on random weights of a model's shapes\n"+
		"  report  a markdown table and a bar chart of bench gemm / bench step JSON results\n\n"+
		"Run `sparselora bench <subcommand> --help` for its flags.")
}

// gemmShape is M x N x K.
type gemmShape struct{ M, N, K int }

// maxGemmDim bounds each dimension of a benchmarked GEMM. Far beyond any
// model's (LLaMA's largest is the 128K vocabulary); it keeps products of
// dimensions well inside int64 and turns a typo into an error, not a hang.
const maxGemmDim = 1 << 20

func parseShapes(s string) ([]gemmShape, error) {
	var out []gemmShape
	for _, part := range strings.Split(s, ",") {
		dims := strings.Split(strings.TrimSpace(part), "x")
		if len(dims) != 3 {
			return nil, fmt.Errorf("--shapes %q: shape %q: want MxNxK, e.g. 4096x4096x4096", s, part)
		}
		var v [3]int
		for i, d := range dims {
			n, err := strconv.Atoi(d)
			if err != nil || n <= 0 || n > maxGemmDim {
				return nil, fmt.Errorf("--shapes %q: shape %q: %q is not an integer from 1 to %d", s, part, d, maxGemmDim)
			}
			v[i] = n
		}
		out = append(out, gemmShape{v[0], v[1], v[2]})
	}
	return out, nil
}

// gatherSpec keeps a fraction of token rows (m), output channels (n) and input
// channels (k), as SparseLoRA does.
type gatherSpec struct{ M, N, K float64 }

func (g gatherSpec) none() bool { return g.M == 1 && g.N == 1 && g.K == 1 }

func parseGather(s string) (gatherSpec, error) {
	g := gatherSpec{1, 1, 1}
	if s == "" {
		return g, nil
	}
	for _, part := range strings.Split(s, ",") {
		key, val, ok := strings.Cut(part, "=")
		f, err := strconv.ParseFloat(val, 64)
		if !ok || err != nil || f <= 0 || f > 1 {
			return g, fmt.Errorf("--gather %q: want axis=fraction with 0 < fraction <= 1, e.g. m=0.75,n=0.25", part)
		}
		switch key {
		case "m":
			g.M = f
		case "n":
			g.N = f
		case "k":
			g.K = f
		default:
			return g, fmt.Errorf("--gather %q: axis must be m (token rows), n (output channels) or k (input channels)", part)
		}
	}
	return g, nil
}

func parseTile(s string) (*gpu.Tile, error) {
	switch s {
	case "auto":
		return nil, nil
	case "large":
		return &gpu.TileLarge, nil
	case "medium":
		return &gpu.TileMedium, nil
	case "small":
		return &gpu.TileSmall, nil
	}
	return nil, fmt.Errorf("--tile %q: want auto, large, medium or small", s)
}

// gemmResult is one row of the benchmark's table and JSON.
type gemmResult struct {
	M, N, K      int     `json:"-"`
	Shape        string  `json:"shape"`
	Layout       string  `json:"layout"`
	BF16         bool    `json:"b_bf16"`
	Variant      string  `json:"variant"`
	UsefulM      int     `json:"useful_m"`
	UsefulN      int     `json:"useful_n"`
	UsefulK      int     `json:"useful_k"`
	Reps         int     `json:"reps"`
	MedianMS     float64 `json:"median_ms"`
	TFLOPS       float64 `json:"tflops"`
	Timing       string  `json:"timing"`
	RelToDense   float64 `json:"tflops_relative_to_dense,omitempty"`
	UsefulFLOPs  float64 `json:"useful_flops"`
	TileOverride string  `json:"tile,omitempty"`
}

func runBenchGemm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench gemm", "bench gemm [--shapes MxNxK,...] [--gather m=F,n=F,k=F] [flags]", stdout, stderr)
	shapesFlag := fs.String("shapes", "4096x4096x4096,2048x11008x4096", "comma-separated MxNxK problem sizes")
	layout := fs.String("layout", "nt", "operand layouts: nn, nt (B stored [N,K] like a weight), tn or tt")
	bf16 := fs.Bool("bf16", false, "store B as bf16 (two per u32), as frozen weights are")
	gatherFlag := fs.String("gather", "", "also time the gathered GEMM keeping these fractions: m (token rows), n (output channels), k (input channels), e.g. m=0.75,n=0.25")
	tileFlag := fs.String("tile", "auto", "tile: auto, large (128x128, 8x8/thread), medium (64x64, 4x4) or small (32x32, 2x2)")
	reps := fs.Int("reps", 0, fmt.Sprintf("timed repetitions per variant (0: enough for about a second, 3 to 50; at most %d)", maxReps))
	jsonOut := fs.String("json", "bench-gemm.json", "write results as JSON to this file (empty: don't)")
	var df deviceFlags
	df.register(fs)
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	if err := checkRange("reps", *reps, 0, maxReps, "a repetition count (0: automatic)"); err != nil {
		return err
	}
	shapes, err := parseShapes(*shapesFlag)
	if err != nil {
		return err
	}
	gather, err := parseGather(*gatherFlag)
	if err != nil {
		return err
	}
	tile, err := parseTile(*tileFlag)
	if err != nil {
		return err
	}
	aTrans, bTrans, err := parseLayout(*layout)
	if err != nil {
		return err
	}
	if _, err := df.options(); err != nil {
		return err
	}
	if err := checkOutputPath("json", *jsonOut); err != nil {
		return err
	}
	dev, closeDev, err := df.open()
	if err != nil {
		return err
	}
	defer closeUnlessInterrupted(ctx, closeDev)
	fmt.Fprintf(stdout, "adapter: %s (%s, %s, %s); %s\n", dev.Info.Name(), dev.Info.Backend, dev.Info.Type, dev.Info.Description, reductionPath(dev))

	var results []gemmResult
	for _, s := range shapes {
		if err := ctx.Err(); err != nil {
			return err
		}
		rs, err := benchOneShape(ctx, dev, s, aTrans, bTrans, *bf16, gather, tile, *reps)
		if err != nil {
			return fmt.Errorf("%dx%dx%d: %w", s.M, s.N, s.K, err)
		}
		for i := range rs {
			rs[i].Layout = strings.ToUpper(*layout)
			if tile != nil {
				rs[i].TileOverride = tile.String()
			}
		}
		results = append(results, rs...)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shape\tlayout\tB\tvariant\tuseful MxNxK\treps\tms\tTFLOP/s\tvs dense\ttiming\t")
	for _, r := range results {
		b := "f32"
		if r.BF16 {
			b = "bf16"
		}
		rel := ""
		if r.RelToDense > 0 {
			rel = fmt.Sprintf("%.2f", r.RelToDense)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dx%dx%d\t%d\t%.3f\t%.3f\t%s\t%s\t\n", r.Shape, r.Layout, b, r.Variant,
			r.UsefulM, r.UsefulN, r.UsefulK, r.Reps, r.MedianMS, r.TFLOPS, rel, r.Timing)
	}
	tw.Flush()
	if *jsonOut != "" {
		out := struct {
			Adapter gpu.AdapterInfo `json:"adapter"`
			Date    string          `json:"date"`
			Results []gemmResult    `json:"results"`
		}{dev.Info, time.Now().UTC().Format(time.RFC3339), results}
		return writeJSON(*jsonOut, out, stdout)
	}
	return nil
}

// writeJSON writes a benchmark report atomically (an interrupted run never
// leaves a truncated report where a complete one was) and says where.
func writeJSON(path string, report any, stdout io.Writer) error {
	raw, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(raw, '\n')); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", path)
	return nil
}

func parseLayout(s string) (aTrans, bTrans bool, err error) {
	switch strings.ToLower(s) {
	case "nn":
		return false, false, nil
	case "nt":
		return false, true, nil
	case "tn":
		return true, false, nil
	case "tt":
		return true, true, nil
	}
	return false, false, fmt.Errorf("--layout %q: want nn, nt, tn or tt", s)
}

func benchOneShape(ctx context.Context, dev *gpu.Device, s gemmShape, aTrans, bTrans, bf16 bool,
	gather gatherSpec, tile *gpu.Tile, reps int) ([]gemmResult, error) {
	rng := rand.New(rand.NewPCG(uint64(s.M), uint64(s.N*s.K)))
	randomTensor := func(dtype gpu.DType, label string, rows, cols int) (*gpu.Tensor, error) {
		t, err := dev.NewTensor(dtype, label, rows, cols)
		if err != nil {
			return nil, err
		}
		v := make([]float32, rows*cols)
		for i := range v {
			// Filling a 4096^2 operand takes a good part of a second on
			// a slow CPU: check for an interrupt every million values.
			if i%(1<<20) == 0 && ctx.Err() != nil {
				t.Release()
				return nil, ctx.Err()
			}
			v[i] = float32(rng.NormFloat64())
		}
		if err := t.Upload(v); err != nil {
			t.Release()
			return nil, err
		}
		return t, nil
	}
	aRows, aCols := s.M, s.K
	if aTrans {
		aRows, aCols = s.K, s.M
	}
	bRows, bCols := s.K, s.N
	if bTrans {
		bRows, bCols = s.N, s.K
	}
	dtype := gpu.F32
	if bf16 {
		dtype = gpu.BF16
	}
	A, err := randomTensor(gpu.F32, "A", aRows, aCols)
	if err != nil {
		return nil, err
	}
	defer A.Release()
	B, err := randomTensor(dtype, "B", bRows, bCols)
	if err != nil {
		return nil, err
	}
	defer B.Release()
	C, err := dev.NewTensor(gpu.F32, "C", s.M, s.N)
	if err != nil {
		return nil, err
	}
	defer C.Release()

	shape := fmt.Sprintf("%dx%dx%d", s.M, s.N, s.K)
	dense := gpu.GemmArgs{A: A, B: B, C: C, ATrans: aTrans, BTrans: bTrans, M: s.M, N: s.N, K: s.K, Tile: tile}
	r, err := timeGemm(ctx, dev, dense, reps)
	if err != nil {
		return nil, err
	}
	r.Shape, r.BF16, r.Variant = shape, bf16, "dense"
	r.UsefulM, r.UsefulN, r.UsefulK = s.M, s.N, s.K
	finish(&r)
	results := []gemmResult{r}
	if gather.none() {
		return results, nil
	}

	g := dense
	keep := func(n int, f float64) []uint32 {
		k := max(1, int(float64(n)*f))
		idx := make([]uint32, k)
		for i, p := range rng.Perm(n)[:k] {
			idx[i] = uint32(p)
		}
		slices.Sort(idx)
		return idx
	}
	var lists []gpu.IndexList
	defer func() {
		for _, l := range lists {
			l.Buf.Release()
		}
	}()
	newList := func(idx []uint32) (*gpu.IndexList, error) {
		l, err := dev.NewIndexList(idx, len(idx), "bench indices")
		if err != nil {
			return nil, err
		}
		lists = append(lists, l)
		return &l, nil
	}
	useful := gemmShape{s.M, s.N, s.K}
	if gather.M < 1 {
		rows := keep(s.M, gather.M)
		if g.GatherAM, err = newList(rows); err != nil {
			return nil, err
		}
		g.ScatterCM = g.GatherAM
		useful.M = len(rows)
	}
	if gather.N < 1 {
		cols := keep(s.N, gather.N)
		if g.GatherBN, err = newList(cols); err != nil {
			return nil, err
		}
		g.ScatterCN = true
		useful.N = len(cols)
	}
	if gather.K < 1 {
		ks := keep(s.K, gather.K)
		if g.GatherK, err = newList(ks); err != nil {
			return nil, err
		}
		g.GatherAK = true
		useful.K = len(ks)
	}
	r, err = timeGemm(ctx, dev, g, reps)
	if err != nil {
		return nil, err
	}
	r.Shape, r.BF16, r.Variant = shape, bf16, "gathered"
	r.UsefulM, r.UsefulN, r.UsefulK = useful.M, useful.N, useful.K
	finish(&r)
	r.RelToDense = r.TFLOPS / results[0].TFLOPS
	return append(results, r), nil
}

func finish(r *gemmResult) {
	r.UsefulFLOPs = gpu.GemmFLOPs(r.UsefulM, r.UsefulN, r.UsefulK)
	r.TFLOPS = r.UsefulFLOPs / (r.MedianMS * 1e-3) / 1e12
}

// maxReps bounds --reps; more repetitions only narrow the median further.
const maxReps = 1000

// batchTime is about how long one submission of timed repetitions runs: short
// enough that the context is checked often, long enough that the host round
// trip between submissions does not show in wall-clock timings.
const batchTime = 500 * time.Millisecond

// timeGemm warms up, picks a repetition count and returns the median time per
// GEMM, from GPU timestamps around each repetition when the adapter has them.
// Repetitions are submitted in batches of about batchTime, checking ctx before
// each, so an interrupt stops the benchmark between batches (and Device.Sync
// returns within its polling interval during one).
func timeGemm(ctx context.Context, dev *gpu.Device, g gpu.GemmArgs, reps int) (gemmResult, error) {
	rec := dev.NewRecorder()
	defer rec.Release()
	warm := time.Now()
	if err := gpu.Gemm(rec, g); err != nil {
		return gemmResult{}, err
	}
	if err := rec.Submit(); err != nil {
		return gemmResult{}, err
	}
	if err := dev.Sync(ctx); err != nil {
		return gemmResult{}, err
	}
	once := max(time.Since(warm), time.Microsecond)
	if reps <= 0 {
		reps = min(50, max(3, int(time.Second/once)))
	}
	batch := min(reps, max(1, int(batchTime/once)))
	rec.Timed = dev.HasTimestamps
	var wall time.Duration
	var times []time.Duration
	for done := 0; done < reps; {
		if err := ctx.Err(); err != nil {
			return gemmResult{}, err
		}
		n := min(batch, reps-done)
		start := time.Now()
		for range n {
			if err := gpu.Gemm(rec, g); err != nil {
				return gemmResult{}, err
			}
			rec.EndPass()
		}
		if err := rec.Submit(); err != nil {
			return gemmResult{}, err
		}
		if err := dev.Sync(ctx); err != nil {
			return gemmResult{}, err
		}
		wall += time.Since(start)
		if dev.HasTimestamps {
			t, err := rec.PassTimes(ctx)
			if err != nil {
				return gemmResult{}, err
			}
			times = append(times, t...)
		}
		done += n
	}
	res := gemmResult{Reps: reps}
	if dev.HasTimestamps {
		slices.Sort(times)
		res.MedianMS = float64(times[len(times)/2]) / 1e6
		res.Timing = "gpu timestamps"
	} else {
		res.MedianMS = float64(wall) / float64(reps) / 1e6
		res.Timing = "wall clock / reps"
	}
	return res, nil
}
