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

// HandleInterrupts returns a context that the first SIGINT or SIGTERM
// cancels, so long work stops at its next check, and arranges for a second
// signal to exit the process at once with ExitInterrupted, for when the work
// does not stop soon enough. interrupted reports whether a signal came; stop
// restores the default signal handling.
func HandleInterrupts(stderr io.Writer) (ctx context.Context, interrupted func() bool, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
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
