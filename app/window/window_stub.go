//go:build nowindow

package window

import (
	"context"
	"errors"
)

// Built reports whether this binary has the window: this one was built with
// the nowindow tag, so it links neither GLFW nor OpenGL (nor needs libX11).
const Built = false

// ErrNotBuilt is Open's error in a binary built without the window.
var ErrNotBuilt = errors.New("this binary was built without the live-metrics window (go build -tags nowindow); " +
	"train with --no-window, or rebuild with `make build`")

// Window stands in for the live-metrics window in binaries built without it.
type Window struct{}

// Open refuses: this binary was built without the window.
func Open(context.Context, *Monitor, Options) (*Window, error) {
	return nil, ErrNotBuilt
}

// Close does nothing.
func (*Window) Close() error { return nil }
