package plot

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/sparselora/sparselora/internal/atomicfile"
)

// Files of a run directory that this package reads and writes.
const (
	MetricsFileName = "metrics.jsonl"
	ConfigFileName  = "train_config.yaml"
	SummaryFileName = "summary.md"
)

var errNoRecords = errors.New("no metrics records")

// RunOptions control WriteRunWith.
type RunOptions struct {
	Options
	// ConfigFile, when set and present, is quoted in summary.md (the resolved
	// configuration of the run). A missing file is not an error.
	ConfigFile string
}

// WriteRun writes the charts of a run (AllCharts, as PNGs named by
// Chart.FileName) and summary.md into dir, quoting dir/train_config.yaml in the
// summary when it exists. The sparsity chart is left out when no record has
// per-layer fractions. It returns the paths written.
func WriteRun(dir string, recs []Record) ([]string, error) {
	return WriteRunWith(dir, recs, RunOptions{ConfigFile: filepath.Join(dir, ConfigFileName)})
}

// WriteRunWith is WriteRun with options.
func WriteRunWith(dir string, recs []Record, opts RunOptions) ([]string, error) {
	if len(recs) == 0 {
		return nil, errNoRecords
	}
	var config []byte
	if opts.ConfigFile != "" {
		raw, err := os.ReadFile(opts.ConfigFile)
		switch {
		case err == nil:
			config = raw
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	var written, images []string
	for _, kind := range AllCharts() {
		if kind == ChartSparsity && !hasKept(recs) {
			continue
		}
		w, h := kind.DefaultSize()
		img, err := RenderWith(kind, recs, w, h, opts.Options)
		if err != nil {
			return written, err
		}
		path := filepath.Join(dir, kind.FileName())
		if err := WritePNG(path, img); err != nil {
			return written, err
		}
		written = append(written, path)
		images = append(images, kind.FileName())
	}
	path := filepath.Join(dir, SummaryFileName)
	if err := atomicfile.WriteFile(path, []byte(Summary(recs, images, config))); err != nil {
		return written, err
	}
	return append(written, path), nil
}

func hasKept(recs []Record) bool {
	for _, r := range recs {
		if len(r.KeptMLP) > 0 || len(r.KeptAttn) > 0 {
			return true
		}
	}
	return false
}

// WritePNG encodes img as PNG and writes it atomically to path.
func WritePNG(path string, img image.Image) error {
	return atomicfile.Write(path, func(w io.Writer) error { return png.Encode(w, img) })
}

// RunStats are the figures of a run that summary.md reports. Figures that the
// records do not carry are NaN (counts are 0).
type RunStats struct {
	Records, TrainSteps, EvalPoints int
	FirstStep, FinalStep            int
	FinalEpoch                      float64
	FinalLoss, MinLoss              float64
	MinLossStep                     int
	FinalLR                         float64
	FinalEvalLoss, BestEvalLoss     float64
	FinalEvalStep, BestEvalLossStep int
	FinalEvalAccuracy, BestAccuracy float64
	BestAccuracyStep                int
	Tokens                          int // trained on: the last record's running total
	MeanTokensPerS, MeanMSPerStep   float64
	PeakBytes                       int64   // most GPU memory held (0: not logged)
	MeanFLOPsRatio                  float64 // over all steps that logged it
	MeanSparseFLOPsRatio            float64 // over sparse steps only
	DenseSteps, SparseSteps         int     // logged training steps of each kind
	FirstSparseStep                 int     // 0 when no step ran sparse
}

// Stats computes a run's summary figures from its records.
func Stats(recs []Record) RunStats {
	nan := math.NaN()
	s := RunStats{Records: len(recs), FinalEpoch: nan, FinalLoss: nan, MinLoss: nan, FinalLR: nan,
		FinalEvalLoss: nan, BestEvalLoss: nan, FinalEvalAccuracy: nan, BestAccuracy: nan}
	var tps, ms, ratio, sparseRatio mean
	for i, r := range recs {
		if i == 0 || r.Step < s.FirstStep {
			s.FirstStep = r.Step
		}
		if r.Step >= s.FinalStep {
			s.FinalStep = r.Step
			if !math.IsNaN(r.Epoch) {
				s.FinalEpoch = r.Epoch
			}
		}
		if r.HasTrain() {
			s.TrainSteps++
			s.FinalLoss = r.Loss
			if !(r.Loss >= s.MinLoss) {
				s.MinLoss, s.MinLossStep = r.Loss, r.Step
			}
			if r.Sparse {
				s.SparseSteps++
				if s.FirstSparseStep == 0 {
					s.FirstSparseStep = r.Step
				}
				sparseRatio.add(r.FLOPsRatio)
			} else {
				s.DenseSteps++
			}
		}
		if !math.IsNaN(r.LR) {
			s.FinalLR = r.LR
		}
		if r.Step >= s.FinalStep && r.Tokens > 0 {
			s.Tokens = r.Tokens // a running total: the last one counts them all
		}
		tps.add(r.TokensPerS)
		ms.add(r.MSPerStep)
		s.PeakBytes = max(s.PeakBytes, r.PeakBytes)
		ratio.add(r.FLOPsRatio)
		if r.HasEval() {
			s.EvalPoints++
			s.FinalEvalStep = r.Step
		}
		if !math.IsNaN(r.EvalLoss) {
			s.FinalEvalLoss = r.EvalLoss
			if !(r.EvalLoss >= s.BestEvalLoss) {
				s.BestEvalLoss, s.BestEvalLossStep = r.EvalLoss, r.Step
			}
		}
		if !math.IsNaN(r.EvalAccuracy) {
			s.FinalEvalAccuracy = r.EvalAccuracy
			if !(r.EvalAccuracy <= s.BestAccuracy) {
				s.BestAccuracy, s.BestAccuracyStep = r.EvalAccuracy, r.Step
			}
		}
	}
	s.MeanTokensPerS, s.MeanMSPerStep = tps.value(), ms.value()
	s.MeanFLOPsRatio, s.MeanSparseFLOPsRatio = ratio.value(), sparseRatio.value()
	return s
}

// mean accumulates the mean of the finite values added.
type mean struct {
	sum float64
	n   int
}

func (m *mean) add(v float64) {
	if !math.IsNaN(v) && !math.IsInf(v, 0) {
		m.sum += v
		m.n++
	}
}

func (m mean) value() float64 {
	if m.n == 0 {
		return math.NaN()
	}
	return m.sum / float64(m.n)
}

// Summary renders summary.md: a table of the run's figures, links to the
// chart images (file names relative to the summary) and the resolved config
// when given.
func Summary(recs []Record, images []string, config []byte) string {
	s := Stats(recs)
	var b strings.Builder
	b.WriteString("# Training run summary\n\n")
	rows := [][2]string{}
	add := func(name, value string) { rows = append(rows, [2]string{name, value}) }
	add("final step", fmt.Sprintf("%d%s", s.FinalStep, ifFinite(s.FinalEpoch, " (epoch %.2f)")))
	add("logged records", fmt.Sprintf("%d (%d training steps, %d evaluations)", s.Records, s.TrainSteps, s.EvalPoints))
	if s.TrainSteps > 0 {
		add("final train loss", fmt.Sprintf("%.4f", s.FinalLoss))
		add("min train loss", fmt.Sprintf("%.4f (step %d)", s.MinLoss, s.MinLossStep))
	}
	if !math.IsNaN(s.FinalEvalLoss) {
		add("final eval loss", fmt.Sprintf("%.4f (step %d)", s.FinalEvalLoss, s.FinalEvalStep))
		add("best eval loss", fmt.Sprintf("%.4f (step %d)", s.BestEvalLoss, s.BestEvalLossStep))
	}
	if !math.IsNaN(s.FinalEvalAccuracy) {
		add("final eval accuracy", fmt.Sprintf("%.4f (step %d)", s.FinalEvalAccuracy, s.FinalEvalStep))
		add("best eval accuracy", fmt.Sprintf("%.4f (step %d)", s.BestAccuracy, s.BestAccuracyStep))
	}
	if !math.IsNaN(s.FinalLR) {
		add("final learning rate", fmt.Sprintf("%.3g", s.FinalLR))
	}
	if s.Tokens > 0 {
		add("tokens trained on", fmt.Sprintf("%d", s.Tokens))
	}
	if !math.IsNaN(s.MeanTokensPerS) {
		add("mean tokens/s", fmt.Sprintf("%.1f", s.MeanTokensPerS))
	}
	if !math.IsNaN(s.MeanMSPerStep) {
		add("mean ms/step", fmt.Sprintf("%.1f", s.MeanMSPerStep))
	}
	if s.PeakBytes > 0 {
		add("GPU memory peak (buffers)", fmt.Sprintf("%.1f MiB", float64(s.PeakBytes)/(1<<20)))
	}
	if !math.IsNaN(s.MeanFLOPsRatio) {
		add("mean FLOP ratio (sparse / dense), all steps", fmt.Sprintf("%.3f", s.MeanFLOPsRatio))
	}
	if !math.IsNaN(s.MeanSparseFLOPsRatio) {
		add("mean FLOP ratio, sparse steps", fmt.Sprintf("%.3f", s.MeanSparseFLOPsRatio))
	}
	if s.TrainSteps > 0 {
		sparse := fmt.Sprintf("%d dense, %d sparse", s.DenseSteps, s.SparseSteps)
		if s.FirstSparseStep > 0 {
			sparse += fmt.Sprintf(" (sparse from step %d)", s.FirstSparseStep)
		}
		add("logged steps by kind", sparse)
	}
	b.WriteString("| figure | value |\n|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |\n", r[0], r[1])
	}
	if len(images) > 0 {
		b.WriteString("\n## Charts\n\n")
		for _, img := range images {
			name := strings.TrimSuffix(img, filepath.Ext(img))
			fmt.Fprintf(&b, "![%s](%s)\n\n", name, img)
		}
	}
	if len(bytes.TrimSpace(config)) > 0 {
		b.WriteString("## Configuration\n\n```yaml\n")
		for _, line := range strings.Split(strings.TrimRight(string(config), "\n"), "\n") {
			b.WriteString(strings.TrimRight(line, " \t") + "\n")
		}
		b.WriteString("```\n")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func ifFinite(v float64, format string) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return ""
	}
	return fmt.Sprintf(format, v)
}
