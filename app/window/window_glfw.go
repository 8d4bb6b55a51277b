//go:build !nowindow

package window

import (
	"context"
	"fmt"
	"image"
	"math"
	"sync"
	"time"

	"github.com/go-gl/gl/v2.1/gl"
	"github.com/go-gl/glfw/v3.3/glfw"
)

// Built reports whether this binary has the window (it was built without the
// nowindow tag).
const Built = true

// Refresh intervals: the status lines (step, ETA) at least four times a
// second, the charts at most twice a second while records stream in (each
// redraw costs tens of milliseconds of CPU that the training step may want).
const (
	statusInterval = 250 * time.Millisecond
	chartsInterval = 500 * time.Millisecond
	eventWait      = 0.1 // seconds an idle loop sleeps in glfw.WaitEventsTimeout
)

// Window is an open live-metrics window. Its GLFW loop runs on the main
// thread (see Serve) until Close.
type Window struct {
	closing   chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	err       error // set by the loop before done closes
}

// Open shows a window that draws m until Close. It returns an error (and no
// window) when there is no display, GLFW or OpenGL cannot start, or the
// platform needs the main thread and ctx did not come from Serve. The q key
// and closing the window stop the command (see Options.Stop); s, p and l
// request a checkpoint, pause or resume, and switch the loss axis.
func Open(ctx context.Context, m *Monitor, opts Options) (*Window, error) {
	if err := CheckDisplay(); err != nil {
		return nil, err
	}
	if opts.Width <= 0 || opts.Height <= 0 {
		opts.Width, opts.Height = 1280, 800
	}
	w := &Window{closing: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	stop := stopFunc(ctx, opts.Stop)
	if err := runOnMainThread(ctx, func() { w.run(ctx, m, opts, stop, ready) }); err != nil {
		return nil, fmt.Errorf("window: %w", err)
	}
	if err := <-ready; err != nil {
		<-w.done
		return nil, err
	}
	return w, nil
}

// Close closes the window and waits for its loop to end; it returns what
// went wrong in the loop, if anything.
func (w *Window) Close() error {
	w.closeOnce.Do(func() { close(w.closing) })
	<-w.done
	return w.err
}

// run is the window's life on the main thread: create, loop, destroy. GLFW
// reports unexpected errors by panicking; they end the window, never the run.
func (w *Window) run(ctx context.Context, m *Monitor, opts Options, stop func(), ready chan<- error) {
	started := false
	defer close(w.done)
	defer m.resumeIfPaused()
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("window: %v", r)
			if started {
				w.err = err
			} else {
				ready <- err
			}
		}
	}()
	defer lowerThreadPriority()()
	win, err := create(opts)
	if err != nil {
		ready <- err
		return
	}
	defer glfw.Terminate()
	defer win.Destroy()
	started = true
	ready <- nil
	w.err = loop(ctx, win, m, stop, w.closing)
}

// create initialises GLFW and opens a window with an OpenGL 2.1 context.
func create(opts Options) (*glfw.Window, error) {
	if err := glfw.Init(); err != nil {
		return nil, fmt.Errorf("window: GLFW: %w", err)
	}
	glfw.WindowHint(glfw.ContextVersionMajor, 2)
	glfw.WindowHint(glfw.ContextVersionMinor, 1)
	glfw.WindowHint(glfw.ScaleToMonitor, glfw.True)
	glfw.WindowHint(glfw.CocoaRetinaFramebuffer, glfw.True)
	win, err := glfw.CreateWindow(opts.Width, opts.Height, opts.Title, nil, nil)
	if err != nil {
		glfw.Terminate()
		return nil, fmt.Errorf("window: GLFW: %w", err)
	}
	win.SetSizeLimits(640, 400, glfw.DontCare, glfw.DontCare)
	win.MakeContextCurrent()
	if err := gl.Init(); err != nil {
		win.Destroy()
		glfw.Terminate()
		return nil, fmt.Errorf("window: OpenGL 2.1: %w", err)
	}
	// Frames change a few times a second: never wait for a vertical blank
	// (some platforms block swaps of hidden windows).
	glfw.SwapInterval(0)
	return win, nil
}

// input is what the keys and the window system asked for since the last
// frame; the callbacks run inside glfw.WaitEventsTimeout on this thread.
type input struct {
	logLoss  bool
	stopping bool
	redraw   bool // something on screen must change now
	expose   bool // the window system lost the picture: show it again
	hidden   bool // closed by the user; the loop only waits for Close
}

func loop(ctx context.Context, win *glfw.Window, m *Monitor, stop func(), closing <-chan struct{}) error {
	var in input
	requestStop := func() {
		if !in.stopping {
			in.stopping = true
			stop()
		}
		in.redraw = true
	}
	win.SetCharCallback(func(_ *glfw.Window, char rune) {
		switch char {
		case 's', 'S':
			m.RequestSave()
		case 'p', 'P':
			m.TogglePause()
		case 'l', 'L':
			in.logLoss = !in.logLoss
		case 'q', 'Q':
			requestStop()
		default:
			return
		}
		in.redraw = true
	})
	win.SetCloseCallback(func(w *glfw.Window) {
		// Closing the window is q without the window: it goes at once and
		// the terminal tells the rest.
		requestStop()
		in.hidden = true
		w.Hide()
	})
	win.SetRefreshCallback(func(*glfw.Window) { in.expose = true })

	var (
		frame                  Frame
		blit                   blitter
		shown                  *image.RGBA
		chartSnap              Snapshot
		lastStatus, lastCharts time.Time
		lastFBW, lastFBH       int
		lastScale              float64
	)
	defer blit.release()
	for {
		select {
		case <-closing:
			return nil
		default:
		}
		glfw.WaitEventsTimeout(eventWait)
		if ctx.Err() != nil && !in.stopping {
			in.stopping, in.redraw = true, true // SIGINT: show that the run is stopping
		}
		if in.hidden {
			continue
		}
		fbW, fbH := win.GetFramebufferSize()
		if fbW < minFrameSide || fbH < minFrameSide {
			continue // minimised
		}
		winW, _ := win.GetSize()
		scale := 1.0
		if winW > 0 {
			scale = float64(fbW) / float64(winW)
		}
		if cs, _ := win.GetContentScale(); float64(cs) > scale {
			scale = float64(cs)
		}
		scale = math.Round(scale*4) / 4
		resized := fbW != lastFBW || fbH != lastFBH || scale != lastScale
		now := time.Now()
		if !resized && !in.redraw && now.Sub(lastStatus) < statusInterval {
			if in.expose && shown != nil {
				blit.draw(fbW, fbH)
				win.SwapBuffers()
			}
			in.expose = false
			continue
		}
		snap := m.Snapshot()
		if resized || in.redraw || now.Sub(lastCharts) >= chartsInterval || chartSnap.Version == 0 {
			if snap.Version != chartSnap.Version {
				lastCharts = now
			}
			chartSnap = snap
		}
		// Fresh status, charts of at most chartsInterval ago.
		snap.Records, snap.Version = chartSnap.Records, chartSnap.Version
		img, err := frame.Render(snap, fbW, fbH, FrameOptions{LogLoss: in.logLoss, Scale: scale, Stopping: in.stopping})
		if err != nil {
			return err
		}
		blit.upload(img)
		blit.draw(fbW, fbH)
		win.SwapBuffers()
		shown = img
		lastStatus, lastFBW, lastFBH, lastScale = now, fbW, fbH, scale
		in.redraw, in.expose = false, false
	}
}

// blitter shows an image.RGBA as one texture stretched over the window.
type blitter struct {
	tex  uint32
	w, h int
}

func (b *blitter) upload(img *image.RGBA) {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	if b.tex == 0 {
		gl.GenTextures(1, &b.tex)
		gl.BindTexture(gl.TEXTURE_2D, b.tex)
		gl.TexParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR)
		gl.TexParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR)
		gl.TexParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE)
		gl.TexParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE)
	}
	gl.BindTexture(gl.TEXTURE_2D, b.tex)
	gl.PixelStorei(gl.UNPACK_ALIGNMENT, 4)
	gl.PixelStorei(gl.UNPACK_ROW_LENGTH, int32(img.Stride/4))
	if w != b.w || h != b.h {
		gl.TexImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, int32(w), int32(h), 0, gl.RGBA, gl.UNSIGNED_BYTE, gl.Ptr(img.Pix))
		b.w, b.h = w, h
	} else {
		gl.TexSubImage2D(gl.TEXTURE_2D, 0, 0, 0, int32(w), int32(h), gl.RGBA, gl.UNSIGNED_BYTE, gl.Ptr(img.Pix))
	}
	gl.PixelStorei(gl.UNPACK_ROW_LENGTH, 0)
}

// draw fills the framebuffer with the texture; image row 0 (the top) goes to
// the top of the window, where OpenGL's y axis points up.
func (b *blitter) draw(fbW, fbH int) {
	gl.Viewport(0, 0, int32(fbW), int32(fbH))
	gl.ClearColor(1, 1, 1, 1)
	gl.Clear(gl.COLOR_BUFFER_BIT)
	if b.tex == 0 {
		return
	}
	gl.MatrixMode(gl.PROJECTION)
	gl.LoadIdentity()
	gl.MatrixMode(gl.MODELVIEW)
	gl.LoadIdentity()
	gl.Enable(gl.TEXTURE_2D)
	gl.BindTexture(gl.TEXTURE_2D, b.tex)
	gl.Color4f(1, 1, 1, 1)
	gl.Begin(gl.QUADS)
	gl.TexCoord2f(0, 1)
	gl.Vertex2f(-1, -1)
	gl.TexCoord2f(1, 1)
	gl.Vertex2f(1, -1)
	gl.TexCoord2f(1, 0)
	gl.Vertex2f(1, 1)
	gl.TexCoord2f(0, 0)
	gl.Vertex2f(-1, 1)
	gl.End()
	gl.Disable(gl.TEXTURE_2D)
}

func (b *blitter) release() {
	if b.tex != 0 {
		gl.DeleteTextures(1, &b.tex)
		b.tex = 0
	}
}
