package gpu_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// TestFindLibraryInUserCache runs from a folder outside the checkout: the
// library must be found in the user's cache folder, and a clear error must
// name where it looked when it is nowhere.
func TestFindLibraryInUserCache(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the cache layout below is Linux's (XDG_CACHE_HOME)")
	}
	real, err := gpu.FindLibrary()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(gpu.LibraryEnv, "")
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	t.Chdir(t.TempDir())
	if _, err := gpu.FindLibrary(); err == nil || !strings.Contains(err.Error(), cache) {
		t.Fatalf("no library anywhere: error %v, want one naming %s", err, cache)
	}
	dir := filepath.Join(cache, "sparselora", "dawn", "linux-"+map[string]string{"amd64": "x64", "arm64": "arm64"}[runtime.GOARCH])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, filepath.Base(real))
	if err := os.Symlink(real, want); err != nil {
		t.Fatal(err)
	}
	got, err := gpu.FindLibrary()
	if err != nil || got != want {
		t.Fatalf("FindLibrary() = %q, %v; want %q", got, err, want)
	}
}
