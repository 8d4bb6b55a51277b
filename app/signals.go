package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
)

// ExitInterrupted is the exit code of a run stopped by Ctrl-C or SIGTERM: 128
// plus SIGINT's number, as shells report a process killed by it.
const ExitInterrupted = 130

// HandleInterrupts returns a context that the first SIGINT, SIGTERM or
// SIGHUP (a closed terminal or SSH session) cancels, so long work stops at its
// next check, and arranges for a second signal to exit the process at once
// with ExitInterrupted, for when the work does not stop soon enough.
// interrupted reports whether a signal came; stop restores the default
// handling of those signals.
//
// SIGPIPE is ignored for good: a write to a closed stdout (a pager that quit,
// a killed tee) then fails with an error instead of killing the process, so
// training goes on (see fallbackWriter).
func HandleInterrupts(stderr io.Writer) (ctx context.Context, interrupted func() bool, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	signal.Ignore(syscall.SIGPIPE)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	var got atomic.Bool
	go func() {
		select {
		case <-signals:
		case <-done:
			return
		}
		got.Store(true)
		cancel()
		fmt.Fprintln(stderr, "sparselora: stopping (interrupt again to quit at once)")
		select {
		case <-signals:
			fmt.Fprintln(stderr, "sparselora: quit")
			os.Exit(ExitInterrupted)
		case <-done:
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			signal.Stop(signals)
			close(done)
			cancel()
		})
	}
	return ctx, got.Load, stop
}

// fallbackWriter writes to w until a write fails (stdout closed by the
// reader), then says so once on fallback and writes there instead, so a
// run's log is not lost with its pipe.
type fallbackWriter struct {
	w, fallback io.Writer
	failed      bool
	mu          sync.Mutex
}

func (f *fallbackWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.failed {
		n, err := f.w.Write(p)
		if err == nil {
			return n, nil
		}
		f.failed = true
		fmt.Fprintf(f.fallback, "sparselora: writing to stdout failed (%v): the log goes on here\n", err)
		m, err := f.fallback.Write(p[n:])
		return n + m, err
	}
	return f.fallback.Write(p)
}
