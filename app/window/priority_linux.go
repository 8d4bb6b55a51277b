//go:build !nowindow

package window

import "syscall"

// lowerThreadPriority makes the calling OS thread (the window's: it is locked
// to its goroutine) yield the CPU to the training threads: on a CPU driver
// such as lavapipe the chart drawing competes with the training step for
// the same cores. Threads the GL driver starts from here inherit it. It
// returns what restores the former priority. Linux sets nice per thread.
func lowerThreadPriority() (restore func()) {
	tid := syscall.Gettid()
	// The raw getpriority syscall returns 20 - nice.
	raw, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
	if err != nil {
		return func() {}
	}
	if syscall.Setpriority(syscall.PRIO_PROCESS, tid, 10) != nil {
		return func() {}
	}
	return func() { syscall.Setpriority(syscall.PRIO_PROCESS, tid, 20-raw) }
}
