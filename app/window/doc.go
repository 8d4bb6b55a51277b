// Package window owns sparselora's live-metrics window: a GLFW window that
// shows a training run as it happens (loss, learning rate, throughput, the
// sparse/dense FLOP ratio, per-layer kept-channel fractions, progress, ETA,
// the adapter, the model and the run directory) and turns the keys s, p, l and
// q into requests to the training loop.
//
// The pieces:
//   - Monitor is the training side: its train.Hooks run on the training
//     goroutine and only copy figures into a mutex-guarded snapshot (or flip a
//     flag), so the GPU step never waits for the window.
//   - Frame draws a snapshot into an image.RGBA: the charts come from package
//     plot (gonum/plot through vgimg, the same code that writes a run's PNGs),
//     the status lines and the kept-fraction strip are drawn on the same
//     gonum canvas. It needs no display and is tested without one.
//   - Serve hands the main OS thread to the window: GLFW (Cocoa on macOS)
//     must be driven from the process's main thread, so cmd/sparselora locks
//     its main goroutine to it and runs the CLI on another goroutine.
//   - Open (built unless the nowindow tag is set) creates the GLFW window and
//     blits frames with OpenGL 2.1 (github.com/go-gl/gl/v2.1): one texture
//     upload and one textured quad per new frame. OpenGL rather than a Dawn
//     surface because the frame is a CPU image anyway (gonum/plot renders on
//     the CPU), GL 2.1 exists on every desktop (macOS included, where 3.x would
//     need the core profile and shaders) and keeps the window entirely apart
//     from the training device: a Dawn surface would share the WebGPU
//     instance and queue with the training step and add surface code to the
//     gpu binding for no gain in what is shown.
//
// Binaries built with -tags nowindow link neither GLFW nor OpenGL (a GLFW
// binary needs libX11.so.6 just to start); their Open says so.
package window
