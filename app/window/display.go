package window

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// Options configure Open.
type Options struct {
	// Title is the window's title.
	Title string
	// Width and Height are the window's initial size in screen coordinates
	// (0: 1280 x 800).
	Width, Height int
	// Stop stops the command when the user presses q or closes the window and
	// the command was not started through Serve (under Serve, Serve's context
	// is cancelled instead, and the command exits as on SIGINT).
	Stop func()
}

// ErrNoDisplay is wrapped by Open's error when there is no display to open a
// window on.
var ErrNoDisplay = errors.New("no display")

// CheckDisplay returns an error wrapping ErrNoDisplay, saying why, when this
// machine has no display for a window; nil when one looks present. On X11
// platforms GLFW's init succeeds even without a display, so this is checked
// first.
func CheckDisplay() error {
	switch runtime.GOOS {
	case "darwin", "windows", "android", "ios":
		return nil
	}
	if os.Getenv("DISPLAY") != "" {
		return nil
	}
	if os.Getenv("WAYLAND_DISPLAY") != "" {
		return fmt.Errorf("%w (WAYLAND_DISPLAY is set but DISPLAY is not, and the window talks X11: run XWayland)", ErrNoDisplay)
	}
	return fmt.Errorf("%w (DISPLAY is not set)", ErrNoDisplay)
}
