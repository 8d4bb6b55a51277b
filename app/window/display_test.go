package window

import (
	"errors"
	"runtime"
	"testing"
)

func TestCheckDisplay(t *testing.T) {
	if runtime.GOOS == "darwin" || runtime.GOOS == "windows" {
		if err := CheckDisplay(); err != nil {
			t.Fatalf("%s always has a display: %v", runtime.GOOS, err)
		}
		return
	}
	t.Setenv("DISPLAY", "")
	t.Setenv("WAYLAND_DISPLAY", "")
	if err := CheckDisplay(); !errors.Is(err, ErrNoDisplay) {
		t.Errorf("no DISPLAY: %v, want ErrNoDisplay", err)
	}
	t.Setenv("WAYLAND_DISPLAY", "wayland-0")
	if err := CheckDisplay(); !errors.Is(err, ErrNoDisplay) {
		t.Errorf("Wayland without XWayland: %v, want ErrNoDisplay (the window talks X11)", err)
	}
	t.Setenv("DISPLAY", ":5")
	if err := CheckDisplay(); err != nil {
		t.Errorf("DISPLAY=:5: %v", err)
	}
}
