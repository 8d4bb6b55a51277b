package app

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sparselora/sparselora/app/window"
	"github.com/sparselora/sparselora/plot"
	"github.com/sparselora/sparselora/train"
)

// windowChildEnv makes this test binary act as the sparselora command (with
// the arguments of SPARSELORA_CHILD_ARGS), started from init so that, like
// cmd/sparselora, its main goroutine keeps the main OS thread and lends it to
// the window through window.Serve.
const windowChildEnv = "SPARSELORA_WINDOW_CHILD"

func init() {
	if os.Getenv(windowChildEnv) != "1" {
		return
	}
	runtime.LockOSThread()
	ctx, interrupted, stop := HandleInterrupts(os.Stderr)
	args := strings.Split(os.Getenv("SPARSELORA_CHILD_ARGS"), "\n")
	code := window.Serve(ctx, func(ctx context.Context) int { return Main(ctx, args, os.Stdout, os.Stderr) })
	if interrupted() {
		code = ExitInterrupted
	}
	stop()
	os.Exit(code)
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// needTool fails the test (CI must not skip it) naming the Debian package
// that provides a missing program; scripts/setup.sh installs them all.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (make setup does)", name, pkg)
	}
	return path
}

// startXvfb starts a virtual X server on a display number it picks itself and
// returns that display (":N"); the server is killed when the test ends.
func startXvfb(t *testing.T) string {
	t.Helper()
	xvfb := needTool(t, "Xvfb", "xvfb")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// -displayfd: the server takes the first free display number and writes
	// it to fd 3 once it accepts connections.
	// -noreset: by default Xvfb resets when its last client leaves (the readiness
	// probe below), and a client connecting during that reset is refused.
	cmd := exec.Command(xvfb, "-displayfd", "3", "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset")
	cmd.ExtraFiles = []*os.File{w}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting Xvfb: %v", err)
	}
	w.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("Xvfb's stderr:\n%s", stderr.String())
		}
	})
	number := make(chan string, 1)
	go func() {
		// The number and its newline may come in two writes; a pipe
		// closed in between would make Xvfb quit.
		line, _ := bufio.NewReader(r).ReadString('\n')
		number <- strings.TrimSpace(line)
	}()
	select {
	case n := <-number:
		if _, err := strconv.Atoi(n); err != nil {
			t.Fatalf("Xvfb did not report its display (%q); stderr:\n%s", n, stderr.String())
		}
		// Wait until a client really connects: on a loaded machine the
		// first connections have been seen to fail right after the report.
		xdotool := needTool(t, "xdotool", "xdotool")
		deadline := time.Now().Add(20 * time.Second)
		for {
			probe := exec.Command(xdotool, "getdisplaygeometry")
			probe.Env = append(os.Environ(), "DISPLAY=:"+n)
			if probe.Run() == nil {
				return ":" + n
			}
			if time.Now().After(deadline) {
				t.Fatalf("Xvfb reported display :%s but no client could connect within 20 s; stderr:\n%s", n, stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Xvfb did not start within 30 s; stderr:\n%s", stderr.String())
	}
	return ""
}

// x11 runs an X client program against display and returns its stdout.
func x11(t *testing.T, display string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DISPLAY="+display)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// screenshot captures the X root window from outside the program (xwd, then
// ImageMagick to PNG) and returns the part the window covers.
func screenshot(t *testing.T, display, windowID, savePath string) *image.RGBA {
	t.Helper()
	needTool(t, "xwd", "x11-apps")
	needTool(t, "convert", "imagemagick")
	xwd := exec.Command("xwd", "-root", "-silent", "-display", display)
	convert := exec.Command("convert", "xwd:-", "png:-")
	var err error
	if convert.Stdin, err = xwd.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	var pngData, convertErr bytes.Buffer
	convert.Stdout, convert.Stderr = &pngData, &convertErr
	if err := convert.Start(); err != nil {
		t.Fatal(err)
	}
	if err := xwd.Run(); err != nil {
		t.Fatalf("xwd: %v", err)
	}
	if err := convert.Wait(); err != nil {
		t.Fatalf("convert xwd:- png:-: %v\n%s", err, convertErr.String())
	}
	if savePath != "" {
		if err := os.WriteFile(savePath, pngData.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, err := png.Decode(&pngData)
	if err != nil {
		t.Fatalf("decoding the screenshot: %v", err)
	}
	geometry := map[string]int{}
	for _, line := range strings.Fields(x11(t, display, "xdotool", "getwindowgeometry", "--shell", windowID)) {
		if k, v, ok := strings.Cut(line, "="); ok {
			geometry[k], _ = strconv.Atoi(v)
		}
	}
	area := image.Rect(geometry["X"], geometry["Y"], geometry["X"]+geometry["WIDTH"], geometry["Y"]+geometry["HEIGHT"])
	if area.Dx() < 100 || area.Dy() < 100 {
		t.Fatalf("window geometry %v from xdotool is implausible", area)
	}
	img := image.NewRGBA(image.Rect(0, 0, area.Dx(), area.Dy()))
	for y := range area.Dy() {
		for x := range area.Dx() {
			img.Set(x, y, root.At(area.Min.X+x, area.Min.Y+y))
		}
	}
	return img
}

func countWhere(img *image.RGBA, r image.Rectangle, match func(color.RGBA) bool) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if match(img.RGBAAt(x, y)) {
				n++
			}
		}
	}
	return n
}

func checkpointDirs(out string) []string {
	dirs, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
	return dirs
}

// waitFor polls cond every 50 ms until it holds or limit passes.
func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestWindowLiveTraining runs `sparselora train` with its window on a
// virtual X server, looks at the window from outside (a screenshot), and
// drives it with keys: s writes a checkpoint, p pauses and resumes, q stops
// the run as SIGINT does (checkpoint, exit 130).
func TestWindowLiveTraining(t *testing.T) {
	display := startXvfb(t)
	out := t.TempDir()
	var args []string
	for _, a := range trainArgs(t, out, "--max-steps", "400", "--log-every", "1") {
		if a != "--no-window" {
			args = append(args, a)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWindowLiveTraining$")
	cmd.Env = append(os.Environ(), windowChildEnv+"=1", "SPARSELORA_CHILD_ARGS="+strings.Join(args, "\n"), "DISPLAY="+display)
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	fail := func(format string, a ...any) {
		t.Helper()
		t.Fatalf(format+"\nstdout:\n%s\nstderr:\n%s", append(a, stdout.String(), stderr.String())...)
	}

	if !window.Built {
		// A binary built with -tags nowindow refuses the window in one line
		// and trains headless.
		if !waitFor(60*time.Second, func() bool { return strings.Contains(stderr.String(), "built without the live-metrics window") }) {
			fail("a nowindow build did not say it has no window")
		}
		return
	}

	needTool(t, "xdotool", "xdotool")
	var windowID string
	if !waitFor(60*time.Second, func() bool {
		search := exec.Command("xdotool", "search", "--onlyvisible", "--name", "sparselora train")
		search.Env = append(os.Environ(), "DISPLAY="+display)
		ids, err := search.Output()
		windowID, _, _ = strings.Cut(strings.TrimSpace(string(ids)), "\n")
		return err == nil && windowID != ""
	}) {
		fail("no window appeared on %s within a minute", display)
	}
	// Past the dense warm-up (20 steps on this run), and time for the window
	// to draw the steps.
	if !waitFor(90*time.Second, func() bool { return metricsLines(out) >= 30 }) {
		fail("fewer than 30 steps logged within 90 s")
	}
	time.Sleep(1500 * time.Millisecond)

	shotPath := os.Getenv("SPARSELORA_WINDOW_SCREENSHOT")
	if shotPath == "" {
		shotPath = filepath.Join(t.TempDir(), "window.png")
	}
	img := screenshot(t, display, windowID, shotPath)
	w, h := img.Rect.Dx(), img.Rect.Dy()
	t.Logf("window %dx%d, screenshot %s", w, h, shotPath)
	blue := func(c color.RGBA) bool { // the train-loss line (tab10 blue)
		return c.B > 0x90 && c.R < 0x60 && c.G > 0x50 && c.G < 0xa0
	}
	dark := func(c color.RGBA) bool { return int(c.R)+int(c.G)+int(c.B) < 3*0x70 }
	lossRect := window.ChartRect(plot.ChartLoss, w, h, 1)
	if n := countWhere(img, lossRect, blue); n < 100 {
		fail("the loss panel %v of the screenshot %s has %d pixels of the loss line: charts not drawn", lossRect, shotPath, n)
	}
	if n := countWhere(img, lossRect, dark); n < 500 {
		fail("the loss panel %v of the screenshot %s has %d dark (text, axis) pixels", lossRect, shotPath, n)
	}
	// The FLOP ratio: red dots for the dense warm-up, blue ones after it.
	flopsRect := window.ChartRect(plot.ChartFLOPs, w, h, 1)
	red := func(c color.RGBA) bool { return c.R > 0xb0 && c.G < 0x60 && c.B < 0x60 }
	if n, m := countWhere(img, flopsRect, red), countWhere(img, flopsRect, blue); n < 50 || m < 50 {
		fail("the FLOPs panel %v of the screenshot %s has %d red (dense) and %d blue (sparse) pixels: want both", flopsRect, shotPath, n, m)
	}
	if n := countWhere(img, image.Rect(0, 0, w, lossRect.Min.Y), dark); n < 1000 {
		fail("the status lines of the screenshot %s have %d dark pixels: no text", shotPath, n)
	}

	key := func(k string) { x11(t, display, "xdotool", "key", "--window", windowID, k) }

	// s: a checkpoint now.
	if len(checkpointDirs(out)) != 0 {
		fail("checkpoints before s: %v", checkpointDirs(out))
	}
	key("s")
	if !waitFor(30*time.Second, func() bool { return len(checkpointDirs(out)) == 1 }) {
		fail("no checkpoint within 30 s of s; have %v", checkpointDirs(out))
	}
	saved := checkpointDirs(out)[0]

	// p: no step logged while paused. The step under way when the key came
	// still ends: wait until the log has been still for half a second (steps
	// take about 0.1 s here, so a run that did not pause never gets there),
	// then watch it for 1.5 s more.
	key("p")
	last, stillSince := metricsLines(out), time.Now()
	if !waitFor(20*time.Second, func() bool {
		if n := metricsLines(out); n != last {
			last, stillSince = n, time.Now()
		}
		return time.Since(stillSince) >= 500*time.Millisecond
	}) {
		fail("steps kept coming for 20 s after p")
	}
	paused := metricsLines(out)
	time.Sleep(1500 * time.Millisecond)
	if n := metricsLines(out); n != paused {
		fail("%d steps logged in 1.5 s while paused", n-paused)
	}
	key("p")
	if !waitFor(30*time.Second, func() bool { return metricsLines(out) > paused+2 }) {
		fail("training did not go on after the second p")
	}
	if metricsLines(out) >= 400 {
		fail("the run ended before q could be tested")
	}

	// q: stop as SIGINT does.
	key("q")
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		fail("still running a minute after q")
	}
	if code := cmd.ProcessState.ExitCode(); code != ExitInterrupted {
		fail("exit code %d after q, want %d", code, ExitInterrupted)
	}
	var onQuit []string
	for _, d := range checkpointDirs(out) {
		if d != saved {
			onQuit = append(onQuit, d)
		}
	}
	if len(onQuit) != 1 {
		fail("checkpoints after q: %v besides %s, want the one written on q", onQuit, saved)
	}
	if !strings.Contains(stdout.String(), "interrupted after step") {
		fail("stdout does not report the interrupted run")
	}
}

func TestWindowHooksChain(t *testing.T) {
	var calls []string
	a := train.Hooks{
		Log:     func(r train.Record) { calls = append(calls, fmt.Sprintf("a%d", r.Step)) },
		SaveNow: func() bool { calls = append(calls, "a-save"); return true },
	}
	saves := 1
	b := train.Hooks{
		Log:   func(r train.Record) { calls = append(calls, fmt.Sprintf("b%d", r.Step)) },
		Start: func(train.Plan) { calls = append(calls, "b-start") },
		SaveNow: func() bool {
			calls = append(calls, "b-save")
			saves--
			return saves == 0
		},
	}
	h := chainHooks(a, b)
	h.Start(train.Plan{})
	h.Log(train.Record{Step: 7})
	if !h.SaveNow() || !h.SaveNow() {
		t.Error("SaveNow false although a hook asked")
	}
	want := "b-start a7 b7 a-save b-save a-save b-save"
	if got := strings.Join(calls, " "); got != want {
		t.Errorf("calls %q, want %q (both hooks, a first; SaveNow asks both)", got, want)
	}
	if h.Step != nil || h.Pause != nil {
		t.Error("hooks neither side has are not nil")
	}
}
