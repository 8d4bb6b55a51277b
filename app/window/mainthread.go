package window

import (
	"context"
	"errors"
	"runtime"
)

// mainThread is the process's main OS thread, lent to windows by Serve.
type mainThread struct {
	calls chan func()
	// stop cancels the context Serve gave to its work: the window's q stops
	// the whole command, as SIGINT does.
	stop context.CancelFunc
}

type mainThreadKey struct{}

// Serve runs work on a new goroutine and lends the calling goroutine's OS
// thread to the windows work opens, until work returns; it returns work's
// result. Call it from main with the main goroutine locked to the main OS
// thread (runtime.LockOSThread in an init function): GLFW must run there.
//
// The context work receives is cancelled when a window asks to stop (its q
// key, or closing it), so the command stops as it does on SIGINT.
func Serve(ctx context.Context, work func(context.Context) int) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	host := &mainThread{calls: make(chan func()), stop: cancel}
	done := make(chan int, 1)
	go func() { done <- work(context.WithValue(ctx, mainThreadKey{}, host)) }()
	for {
		select {
		case code := <-done:
			return code
		case f := <-host.calls:
			f()
		}
	}
}

// errNoMainThread is returned where the platform needs the main thread and
// the command was not started through Serve.
var errNoMainThread = errors.New("the window needs the main thread, and this command was not started through window.Serve")

// runOnMainThread runs f on the thread Serve lent (in ctx), without waiting
// for it to finish. Without Serve, on platforms whose window system accepts
// any thread used consistently (X11, Windows), f runs on a new goroutine
// locked to its own OS thread; macOS refuses.
func runOnMainThread(ctx context.Context, f func()) error {
	if host, ok := ctx.Value(mainThreadKey{}).(*mainThread); ok {
		select {
		case host.calls <- f:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if runtime.GOOS == "darwin" {
		return errNoMainThread
	}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		f()
	}()
	return nil
}

// stopFunc returns what stops the command for a window's q: Serve's cancel
// when ctx came from Serve, else fallback.
func stopFunc(ctx context.Context, fallback func()) func() {
	if host, ok := ctx.Value(mainThreadKey{}).(*mainThread); ok {
		return host.stop
	}
	return fallback
}
