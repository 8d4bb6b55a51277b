//go:build !nowindow && !linux

package window

// lowerThreadPriority does nothing where threads have no nice value of their
// own; the window's redraws are rare enough anyway.
func lowerThreadPriority() (restore func()) { return func() {} }
