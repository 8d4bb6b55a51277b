// Package gpu is sparselora's WebGPU runtime: a cgo binding over the standard
// webgpu.h C API (declared in webgpu_abi.h, only what is used), loaded at run time
// with dlopen so that `go build` needs no GPU library; adapter and device selection
// that refuses Dawn's Null backend; buffers, tensors, compiled-and-cached WGSL
// kernels, a Recorder that puts many dispatches into one queue submission, GPU
// timestamps, and the Go wrappers of the kernels in package shaders.
//
// Kernels: Device.Kernel compiles a file of package shaders behind its
// constants and shaders/prelude.wgsl (what every kernel shares), and compile
// errors name the part and its line. Every dispatch is recorded with a Kind
// (what it computes), which work counting and profiles read, and its uniform
// parameters packed by PackParams.
//
// Ownership: whoever allocates a GPU buffer frees it. A Tensor made by
// Device.NewTensor owns its buffer and Release frees it; a view (Sub, Rows, or
// a Tensor literal over another tensor's Buf) only names a byte range of it,
// may be read and written like the tensor but never frees it, and must not
// outlive it. A Recorder references the buffers of the dispatches it records
// until Submit and owns none of them; the Device owns its compiled kernels.
//
// The binding is written here rather than taken from a library because no Go
// WebGPU binding is served by the module proxy, and because the 2025 webgpu.h ABI
// (WGPUStringView, callback-info structs, futures) is what Dawn exports.
package gpu

/*
#cgo linux LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// LibraryEnv names the environment variable that points at a webgpu.h shared
// library (Dawn, or wgpu-native) to use instead of the one `make setup` fetched.
const LibraryEnv = "SPARSELORA_WEBGPU_LIB"

// libraryNames are the file names the npm packages of Dawn use on each OS, and the
// usual wgpu-native names, in the order they are tried in each search folder.
func libraryNames() []string {
	switch runtime.GOOS {
	case "darwin":
		return []string{"libwebgpu_wrapper.dylib", "libwebgpu_dawn.dylib", "libwgpu_native.dylib"}
	case "windows":
		return []string{"webgpu_wrapper.dll", "libwebgpu_wrapper.dll", "webgpu_dawn.dll", "wgpu_native.dll"}
	default:
		return []string{"libwebgpu_wrapper.so", "libwebgpu_dawn.so", "libwgpu_native.so"}
	}
}

func platformDir() string {
	arch := map[string]string{"amd64": "x64", "arm64": "arm64"}[runtime.GOARCH]
	osName := map[string]string{"linux": "linux", "darwin": "darwin", "windows": "win32"}[runtime.GOOS]
	return osName + "-" + arch
}

// FindLibrary returns the path of the WebGPU library: $SPARSELORA_WEBGPU_LIB if set,
// else .cache/dawn/<platform>/ in the working directory, the executable's directory
// or any of their parents (where `make setup` puts it in a checkout), else
// ../lib/sparselora/ beside the executable (`make install`), else the user's
// cache folder, sparselora/dawn/<platform>/ (where `make setup` also copies it),
// so an installed binary finds it from any working directory.
func FindLibrary() (string, error) {
	if p := os.Getenv(LibraryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", LibraryEnv, p, err)
		}
		return p, nil
	}
	var roots []string
	if wd, err := os.Getwd(); err == nil {
		roots = append(roots, wd)
	}
	if exe, err := os.Executable(); err == nil {
		roots = append(roots, filepath.Dir(exe))
	}
	for _, root := range roots {
		for dir := root; ; dir = filepath.Dir(dir) {
			for _, name := range libraryNames() {
				p := filepath.Join(dir, ".cache", "dawn", platformDir(), name)
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "..", "lib", "sparselora"))
	}
	if cache, err := os.UserCacheDir(); err == nil {
		dirs = append(dirs, filepath.Join(cache, "sparselora", "dawn", platformDir()))
	}
	for _, dir := range dirs {
		for _, name := range libraryNames() {
			if p := filepath.Join(dir, name); fileExists(p) {
				return filepath.Clean(p), nil
			}
		}
	}
	return "", fmt.Errorf("no WebGPU library found in .cache/dawn/%s/ above the working directory or the executable, nor in %s: "+
		"run `make setup` in the sparselora checkout (it fetches Dawn), or set %s to a webgpu.h shared library "+
		"such as Dawn's libwebgpu_dawn or wgpu-native", platformDir(), strings.Join(dirs, " or "), LibraryEnv)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var library struct {
	once sync.Once
	path string
	err  error
}

// loadLibrary opens the WebGPU library once per process.
func loadLibrary() (string, error) {
	library.once.Do(func() {
		path, err := FindLibrary()
		if err != nil {
			library.err = err
			return
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		var msg [1024]C.char
		if C.sl_load(cpath, &msg[0], C.size_t(len(msg))) != 0 {
			library.err = fmt.Errorf("loading WebGPU library %s: %s", path, C.GoString(&msg[0]))
			return
		}
		library.path = path
	})
	return library.path, library.err
}
