package window

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/sparselora/sparselora/train"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestPauseBlocksUntilResumedOrCancelled(t *testing.T) {
	m := NewMonitor("run")
	hooks := m.Hooks()
	ctx := context.Background()

	// Not paused: returns at once.
	done := make(chan struct{})
	go func() { hooks.Pause(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Pause blocked while the run was not paused")
	}

	if !m.TogglePause() {
		t.Fatal("TogglePause did not report the run paused")
	}
	done = make(chan struct{})
	go func() { hooks.Pause(ctx); close(done) }()
	select {
	case <-done:
		t.Fatal("Pause returned while the run was paused")
	case <-time.After(100 * time.Millisecond):
	}
	if !m.Snapshot().Paused {
		t.Error("snapshot does not say paused")
	}
	if m.TogglePause() {
		t.Fatal("second TogglePause did not resume")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Pause did not return after resume")
	}

	// Paused, then the run's context ends (q, SIGINT): Pause returns.
	m.TogglePause()
	cctx, cancel := context.WithCancel(ctx)
	done = make(chan struct{})
	go func() { hooks.Pause(cctx); close(done) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Pause did not return when its context ended")
	}
}

func TestSaveNowIsTakenOnce(t *testing.T) {
	m := NewMonitor("run")
	hooks := m.Hooks()
	if hooks.SaveNow() {
		t.Fatal("SaveNow true before any request")
	}
	m.RequestSave()
	if !m.Snapshot().SavePending {
		t.Error("snapshot does not show the pending save")
	}
	if !hooks.SaveNow() {
		t.Fatal("SaveNow false after RequestSave")
	}
	if hooks.SaveNow() {
		t.Fatal("SaveNow true twice for one request")
	}
}

func TestSnapshotETAExcludesPauses(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	m := newMonitorWithClock("run", clock.now)
	hooks := m.Hooks()
	hooks.Start(train.Plan{TotalSteps: 100})
	if eta := m.Snapshot().ETA; eta != -1 {
		t.Fatalf("ETA before any step = %v, want unknown (-1)", eta)
	}
	hooks.Step(1, 100, 0) // the clock starts here
	for s := 2; s <= 11; s++ {
		clock.advance(200 * time.Millisecond)
		hooks.Step(s, 100, 0)
	}
	// 10 steps in 2 s: 89 steps left at 0.2 s.
	if got, want := m.Snapshot().ETA, 89*200*time.Millisecond; got != want {
		t.Errorf("ETA = %v, want %v", got, want)
	}
	m.TogglePause()
	clock.advance(time.Minute)
	if got, want := m.Snapshot().ETA, 89*200*time.Millisecond; got != want {
		t.Errorf("ETA while paused = %v, want %v (time paused left out)", got, want)
	}
	m.TogglePause()
	clock.advance(200 * time.Millisecond)
	hooks.Step(12, 100, 0)
	s := m.Snapshot()
	if want := 88 * 200 * time.Millisecond; s.ETA != want {
		t.Errorf("ETA after the pause = %v, want %v", s.ETA, want)
	}
	if want := 2200 * time.Millisecond; s.Elapsed != want {
		t.Errorf("elapsed = %v, want %v", s.Elapsed, want)
	}
}

func TestLogConvertsRecords(t *testing.T) {
	m := NewMonitor("run")
	hooks := m.Hooks()
	hooks.Log(train.Record{Step: 3, Loss: 2.5, LR: 1e-3, FLOPsRatio: 0.6, Sparse: true, KeptMLP: []float64{0.5, 0.25}})
	eval := 2.75
	hooks.Log(train.Record{Step: 4, Loss: 2.4, EvalLoss: &eval})
	s := m.Snapshot()
	if s.Version != 2 || len(s.Records) != 2 {
		t.Fatalf("version %d, %d records; want 2, 2", s.Version, len(s.Records))
	}
	r := s.Records[0]
	if r.Step != 3 || r.Loss != 2.5 || r.LR != 1e-3 || r.FLOPsRatio != 0.6 || !r.Sparse || len(r.KeptMLP) != 2 || r.KeptMLP[1] != 0.25 {
		t.Errorf("record 0 = %+v", r)
	}
	if !math.IsNaN(r.EvalLoss) || !math.IsNaN(r.EvalAccuracy) {
		t.Errorf("absent eval figures = %v, %v; want NaN", r.EvalLoss, r.EvalAccuracy)
	}
	if s.Records[1].EvalLoss != 2.75 || s.LastEval == nil || *s.LastEval != 2.75 {
		t.Errorf("eval loss not carried: %+v, last %v", s.Records[1], s.LastEval)
	}
	// A snapshot's records never change after it was taken.
	hooks.Log(train.Record{Step: 5, Loss: 9})
	if len(s.Records) != 2 || s.Records[1].Loss != 2.4 {
		t.Errorf("an earlier snapshot changed: %+v", s.Records)
	}
}
