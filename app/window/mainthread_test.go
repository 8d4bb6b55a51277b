package window

import (
	"context"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestServeLendsItsThread checks that work started by Serve runs a window's
// function on Serve's own OS thread, and that the window's stop cancels the
// context work got.
func TestServeLendsItsThread(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("thread ids are read with gettid, Linux only")
	}
	result := make(chan [2]int, 1)
	go func() {
		runtime.LockOSThread() // as cmd/sparselora's init does for main
		serveThread := syscall.Gettid()
		code := Serve(context.Background(), func(ctx context.Context) int {
			ran := make(chan int, 1)
			if err := runOnMainThread(ctx, func() { ran <- syscall.Gettid() }); err != nil {
				t.Error(err)
				return 1
			}
			result <- [2]int{serveThread, <-ran}
			stopFunc(ctx, func() { t.Error("fallback stop used under Serve") })()
			select {
			case <-ctx.Done():
				return 7
			case <-time.After(10 * time.Second):
				t.Error("the window's stop did not cancel work's context")
				return 1
			}
		})
		if code != 7 {
			t.Errorf("Serve returned %d, want work's 7", code)
		}
		close(result)
	}()
	got := <-result
	if got[0] != got[1] {
		t.Errorf("the window function ran on thread %d, Serve's thread is %d", got[1], got[0])
	}
	for range result {
	}
}

func TestRunOnMainThreadWithoutServe(t *testing.T) {
	if runtime.GOOS == "darwin" {
		if err := runOnMainThread(context.Background(), func() {}); err == nil {
			t.Error("macOS without Serve: no error, but Cocoa needs the main thread")
		}
		return
	}
	ran := make(chan struct{})
	if err := runOnMainThread(context.Background(), func() { close(ran) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("function never ran")
	}
	stopped := false
	stopFunc(context.Background(), func() { stopped = true })()
	if !stopped {
		t.Error("without Serve, the fallback stop was not used")
	}
}
