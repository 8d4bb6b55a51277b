package window

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sparselora/sparselora/plot"
	"github.com/sparselora/sparselora/train"
)

// Monitor collects a training run's progress for the window. Its Hooks run on
// the training goroutine and only copy figures under a mutex (never waiting
// for the window); the window reads a Snapshot when it draws. The window's
// keys come back through SaveNow (a flag the next step takes) and Pause
// (which blocks the training goroutine while paused).
type Monitor struct {
	runDir string
	now    func() time.Time

	saveRequested atomic.Bool

	mu       sync.Mutex
	snap     Snapshot
	resume   chan struct{} // closed when a pause ends; nil while running
	pausedAt time.Time
	// stepClock measures training time for the ETA: it starts at the first
	// step of this process and leaves out time spent paused.
	clockStart  time.Time
	clockStep   int
	pausedTotal time.Duration
}

// Snapshot is what the window shows, copied out of the Monitor.
type Snapshot struct {
	// Version counts the changes to Records (the charts redraw only when it
	// moves).
	Version int
	Records []plot.Record

	Started     bool // the run's plan is known
	Adapter     string
	Backend     string
	Model       string
	Layers      int
	RunDir      string
	Sparsity    string
	SparseFrom  int // first sparse update, 1-based; 0 when the run stays dense
	Step        int
	StartStep   int
	Total       int
	Epoch       float64
	ETA         time.Duration // -1 while unknown
	Elapsed     time.Duration
	SVDDone     int
	SVDTotal    int
	Note        string
	Checkpoint  string // the newest checkpoint written
	Paused      bool
	SavePending bool
	Last        train.Record // the newest logged record
	LastEval    *float64     // the newest evaluation loss
}

// NewMonitor returns a Monitor for a run writing into runDir.
func NewMonitor(runDir string) *Monitor {
	return newMonitorWithClock(runDir, time.Now)
}

func newMonitorWithClock(runDir string, now func() time.Time) *Monitor {
	return &Monitor{runDir: runDir, now: now, snap: Snapshot{RunDir: runDir, ETA: -1}}
}

// Hooks returns the hooks that feed the monitor; chain them with the
// terminal's.
func (m *Monitor) Hooks() train.Hooks {
	return train.Hooks{
		Start:      m.start,
		SVD:        m.svd,
		Note:       m.note,
		Step:       m.step,
		Log:        m.log,
		Checkpoint: m.checkpoint,
		SaveNow:    func() bool { return m.saveRequested.Swap(false) },
		Pause:      m.pause,
	}
}

func (m *Monitor) start(p train.Plan) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &m.snap
	s.Started = true
	s.Adapter = p.Adapter.Name()
	if p.Adapter.Vendor != "" {
		s.Adapter += " (" + p.Adapter.Vendor + ")"
	}
	s.Backend = p.Adapter.BackendName
	if s.Backend == "" {
		s.Backend = fmt.Sprint(p.Adapter.Backend)
	}
	s.Model = p.ModelDir
	if p.Config != nil {
		s.Layers = p.Config.NumHiddenLayers
		s.Model += fmt.Sprintf(" (%s, %d layers, hidden %d)", p.Config.Architecture, p.Config.NumHiddenLayers, p.Config.HiddenSize)
	}
	s.Sparsity = p.Sparsity
	if p.SparseFrom < p.TotalSteps {
		s.SparseFrom = p.SparseFrom + 1
	}
	s.Step, s.StartStep, s.Total = p.StartStep, p.StartStep, p.TotalSteps
}

func (m *Monitor) svd(done, total int) {
	m.mu.Lock()
	m.snap.SVDDone, m.snap.SVDTotal = done, total
	m.mu.Unlock()
}

func (m *Monitor) note(line string) {
	m.mu.Lock()
	m.snap.Note = line
	m.mu.Unlock()
}

func (m *Monitor) step(step, total int, epoch float64) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.clockStart.IsZero() {
		// The first step includes the pipelines' compilation; the clock
		// starts after it.
		m.clockStart, m.clockStep = now, step
	}
	m.snap.Step, m.snap.Total, m.snap.Epoch = step, total, epoch
}

func (m *Monitor) log(r train.Record) {
	rec := PlotRecord(r)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snap.Records = append(m.snap.Records, rec)
	m.snap.Version++
	m.snap.Last = r
	if r.EvalLoss != nil {
		v := *r.EvalLoss
		m.snap.LastEval = &v
	}
}

func (m *Monitor) checkpoint(dir string) {
	m.mu.Lock()
	m.snap.Checkpoint = dir
	m.mu.Unlock()
}

// pause blocks while the window holds the run paused, until resumed or ctx
// ends.
func (m *Monitor) pause(ctx context.Context) {
	m.mu.Lock()
	resume := m.resume
	m.mu.Unlock()
	if resume == nil {
		return
	}
	select {
	case <-resume:
	case <-ctx.Done():
	}
}

// RequestSave asks for a checkpoint after the current step (the s key).
func (m *Monitor) RequestSave() { m.saveRequested.Store(true) }

// TogglePause pauses the run after its current step, or resumes it (the p
// key); it reports whether the run is now paused.
func (m *Monitor) TogglePause() bool {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.resume == nil {
		m.resume = make(chan struct{})
		m.pausedAt = now
		return true
	}
	m.resumeLocked(now)
	return false
}

// resumeIfPaused lets a paused run go on: a window that ends never leaves
// the run paused with no key to resume it.
func (m *Monitor) resumeIfPaused() {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.resume != nil {
		m.resumeLocked(now)
	}
}

func (m *Monitor) resumeLocked(now time.Time) {
	close(m.resume)
	m.resume = nil
	m.pausedTotal += now.Sub(m.pausedAt)
}

// Snapshot copies the monitor's state. Records shares its backing array with
// the monitor, which only appends: the slice the caller gets never changes.
func (m *Monitor) Snapshot() Snapshot {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.snap
	s.Records = s.Records[:len(s.Records):len(s.Records)]
	s.Paused = m.resume != nil
	s.SavePending = m.saveRequested.Load()
	s.ETA = -1
	if !m.clockStart.IsZero() {
		active := now.Sub(m.clockStart) - m.pausedTotal
		if s.Paused {
			active -= now.Sub(m.pausedAt)
		}
		s.Elapsed = active
		if done := s.Step - m.clockStep; done > 0 && s.Total >= s.Step {
			perStep := active / time.Duration(done)
			s.ETA = perStep * time.Duration(s.Total-s.Step)
		}
	}
	return s
}

// PlotRecord converts a train.Record (a metrics.jsonl line as the trainer
// writes it) into the chart package's record, where absent figures are NaN.
func PlotRecord(r train.Record) plot.Record {
	rec := plot.Record{
		Step: r.Step, Epoch: r.Epoch, Loss: r.Loss, LR: r.LR, GradNorm: r.GradNorm, Tokens: r.Tokens,
		TokensPerS: r.TokensPerS, MSPerStep: r.MSPerStep, FLOPsRatio: r.FLOPsRatio, Sparse: r.Sparse, PeakBytes: r.PeakBytes,
		KeptMLP: append([]float64(nil), r.KeptMLP...), KeptAttn: append([]float64(nil), r.KeptAttn...), EvalLoss: math.NaN(), EvalAccuracy: math.NaN(),
	}
	if r.EvalLoss != nil {
		rec.EvalLoss = *r.EvalLoss
	}
	if r.EvalAccuracy != nil {
		rec.EvalAccuracy = *r.EvalAccuracy
	}
	return rec
}
