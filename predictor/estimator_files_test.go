package predictor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// copyCheckpoint copies the files of the checkpoint folder src into a
// writable temporary folder.
func copyCheckpoint(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func loadModel(t *testing.T, dir string) *model.Model {
	t.Helper()
	m, err := model.Load(testDevice, dir, gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Release)
	return m
}

// patchKeepingTime overwrites bytes of a file at off and restores its
// modification time, as a copy that preserves time stamps would.
func patchKeepingTime(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(path); err != nil || after.Size() != st.Size() || !after.ModTime().Equal(st.ModTime()) {
		t.Fatalf("%s: the patch changed the size or time stamp (%v)", path, err)
	}
}

// tensorFileOffset is the offset in a safetensors file of a tensor's first byte.
func tensorFileOffset(t *testing.T, path, name string) int64 {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.Info(name)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var length [8]byte
	if _, err := io.ReadFull(raw, length[:]); err != nil {
		t.Fatal(err)
	}
	return 8 + int64(binary.LittleEndian.Uint64(length[:])) + info.Begin
}

// allProducts downloads A B of every target.
func allProducts(t *testing.T, e *Estimator) map[Target]*mat.Dense {
	t.Helper()
	p := map[Target]*mat.Dense{}
	for _, tgt := range e.Targets() {
		p[tgt] = product(t, e, tgt)
	}
	return p
}

// sameProducts fails unless got's products are within tol of want's.
func sameProducts(t *testing.T, what string, got *Estimator, want map[Target]*mat.Dense, tol float64) {
	t.Helper()
	for tgt, w := range want {
		if err := relErr(product(t, got, tgt), w); err > tol {
			t.Errorf("%s: %s: A B differs from the expected factors' by %.3g", what, tgt.Name(), err)
		}
	}
}

// TestEstimateCacheCheckpointFiles checks the cache key of a model loaded
// from a checkpoint: a warm start hits without reading weights, any change of
// the file's time stamp, size or header misses, and VerifyContent notices
// weights changed behind a kept size and time stamp.
func TestEstimateCacheCheckpointFiles(t *testing.T) {
	fixture := fixtures.HF(t, "llama-gqa")
	rank, targets := fixtureTargets(t, fixture)
	dir := copyCheckpoint(t, filepath.Join(fixture, "model"))
	weights := filepath.Join(dir, safetensors.SingleFileName)
	var warnings bytes.Buffer
	calls := 0
	opts := EstimateOptions{CacheDir: t.TempDir(), Warnings: &warnings, Progress: func(done, total int) { calls++ }}
	verify := opts
	verify.VerifyContent = true

	cold := loadModel(t, dir)
	if len(cold.Sources) != 1 || cold.Sources[0].Path != weights {
		t.Fatalf("model sources %+v, want just %s", cold.Sources, weights)
	}
	first := estimate(t, cold, targets, rank, opts)
	if first.FromCache() || calls == 0 || first.CacheKeyedBy() != CacheKeyFiles {
		t.Fatalf("cold start: from cache %v, %d progress calls, keyed by %v", first.FromCache(), calls, first.CacheKeyedBy())
	}
	want := allProducts(t, first)
	sameProducts(t, "cold start vs no cache", estimate(t, cold, targets, rank, EstimateOptions{NoCache: true}), want, 0)

	// A warm start (a fresh load of the same files) hits.
	calls = 0
	warm := estimate(t, loadModel(t, dir), targets, rank, opts)
	if !warm.FromCache() || calls != 0 || warm.CachePath() != first.CachePath() || warm.CacheKeyedBy() != CacheKeyFiles {
		t.Fatalf("warm start: from cache %v, %d progress calls, keyed by %v, path %s (first %s)",
			warm.FromCache(), calls, warm.CacheKeyedBy(), warm.CachePath(), first.CachePath())
	}
	sameProducts(t, "warm start", warm, want, 0)

	// Weight bytes changed behind the same size and time stamp: the key reads
	// no weight (neither the file's data nor the GPU's copy), so a plain warm
	// start still hits, by design; VerifyContent notices and recomputes.
	gate := Target{1, model.ProjGate}
	patched := make([]byte, 4*16)
	for i := range 16 {
		binary.LittleEndian.PutUint32(patched[4*i:], 0x40a00000) // 5.0
	}
	patchKeepingTime(t, weights, tensorFileOffset(t, weights, "model.layers.1.mlp.gate_proj.weight"), patched)
	changed := loadModel(t, dir)
	if e := estimate(t, changed, targets, rank, opts); !e.FromCache() || e.CachePath() != first.CachePath() {
		t.Errorf("same size and time stamp without VerifyContent: from cache %v, path %s", e.FromCache(), e.CachePath())
	}
	wantChanged := allProducts(t, estimate(t, changed, targets, rank, EstimateOptions{NoCache: true}))
	if err := relErr(wantChanged[gate], want[gate]); err < 1e-3 {
		t.Fatalf("the patch hardly changed %s's factors (%.3g)", gate.Name(), err)
	}
	warnings.Reset()
	calls = 0
	verified := estimate(t, changed, targets, rank, verify)
	if verified.FromCache() || calls == 0 || !strings.Contains(warnings.String(), first.CachePath()) {
		t.Errorf("VerifyContent: from cache %v, %d progress calls, warning %q", verified.FromCache(), calls, warnings.String())
	}
	sameProducts(t, "VerifyContent after a content change", verified, wantChanged, 1e-6)
	// The rewritten file now matches the weights, verified or not.
	for _, o := range []EstimateOptions{verify, opts} {
		if e := estimate(t, changed, targets, rank, o); !e.FromCache() || e.CachePath() != first.CachePath() {
			t.Errorf("after the rebuild (VerifyContent %v): from cache %v", o.VerifyContent, e.FromCache())
		} else {
			sameProducts(t, "after the rebuild", e, wantChanged, 0)
		}
	}

	// A new time stamp misses.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(weights, later, later); err != nil {
		t.Fatal(err)
	}
	touched := estimate(t, loadModel(t, dir), targets, rank, opts)
	if touched.FromCache() || touched.CachePath() == first.CachePath() || touched.CacheKeyedBy() != CacheKeyFiles {
		t.Errorf("new time stamp: from cache %v, path %s (before %s)", touched.FromCache(), touched.CachePath(), first.CachePath())
	}

	// A changed header (here its metadata) misses even with the size and
	// time stamp kept.
	header, err := os.ReadFile(weights)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(header, []byte(`"format":"pt"`))
	if at < 0 {
		t.Fatalf("%s: no format metadata to change", weights)
	}
	patchKeepingTime(t, weights, int64(at), []byte(`"format":"xx"`))
	if e := estimate(t, loadModel(t, dir), targets, rank, opts); e.FromCache() || e.CachePath() == touched.CachePath() {
		t.Errorf("changed header: from cache %v, path %s (before %s)", e.FromCache(), e.CachePath(), touched.CachePath())
	}

	// A file that changes after the model was loaded cannot describe what the
	// GPU holds: the key falls back to the content, with a warning.
	loaded := loadModel(t, dir)
	evenLater := later.Add(time.Hour)
	if err := os.Chtimes(weights, evenLater, evenLater); err != nil {
		t.Fatal(err)
	}
	warnings.Reset()
	e := estimate(t, loaded, targets, rank, opts)
	if e.CacheKeyedBy() != CacheKeyContent || !strings.Contains(warnings.String(), weights) || !strings.Contains(warnings.String(), "changed since the model was loaded") {
		t.Errorf("file changed after loading: keyed by %v, warning %q", e.CacheKeyedBy(), warnings.String())
	}
	sameProducts(t, "content key", e, wantChanged, 1e-6)
}

// writeShardedCheckpoint rewrites the single-file checkpoint in dir as two
// shards and an index.
func writeShardedCheckpoint(t *testing.T, dir string) {
	t.Helper()
	single := filepath.Join(dir, safetensors.SingleFileName)
	f, err := safetensors.Open(single)
	if err != nil {
		t.Fatal(err)
	}
	shards := []map[string]safetensors.Tensor{{}, {}}
	shardNames := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
	weightMap := map[string]string{}
	for _, name := range f.Names() {
		info, err := f.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		values, err := f.ReadFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		tensor, err := safetensors.NewFloatTensor(safetensors.F32, info.Shape, values)
		if err != nil {
			t.Fatal(err)
		}
		i := 1
		if strings.HasPrefix(name, "model.layers.0.") || strings.HasPrefix(name, "model.layers.1.") {
			i = 0
		}
		shards[i][name] = tensor
		weightMap[name] = shardNames[i]
	}
	f.Close()
	for i, s := range shards {
		if err := safetensors.WriteFile(filepath.Join(dir, shardNames[i]), s, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	index, err := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, safetensors.IndexFileName), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(single); err != nil {
		t.Fatal(err)
	}
}

// TestEstimateCacheShardedCheckpoint checks that the key covers the index and
// every shard of a sharded checkpoint.
func TestEstimateCacheShardedCheckpoint(t *testing.T) {
	fixture := fixtures.HF(t, "llama-gqa")
	rank, targets := fixtureTargets(t, fixture)
	dir := copyCheckpoint(t, filepath.Join(fixture, "model"))
	writeShardedCheckpoint(t, dir)
	opts := EstimateOptions{CacheDir: t.TempDir(), Warnings: io.Discard}

	m := loadModel(t, dir)
	if len(m.Sources) != 3 {
		t.Fatalf("model sources %+v, want the index and two shards", m.Sources)
	}
	first := estimate(t, m, targets, rank, opts)
	if first.FromCache() || first.CacheKeyedBy() != CacheKeyFiles {
		t.Fatalf("cold start: from cache %v, keyed by %v", first.FromCache(), first.CacheKeyedBy())
	}
	if e := estimate(t, loadModel(t, dir), targets, rank, opts); !e.FromCache() || e.CachePath() != first.CachePath() {
		t.Fatalf("warm start: from cache %v", e.FromCache())
	}
	// Each file takes part: a new time stamp on any one of them misses.
	previous := first.CachePath()
	for i, src := range m.Sources {
		stamp := time.Now().Add(time.Duration(i+1) * time.Hour)
		if err := os.Chtimes(src.Path, stamp, stamp); err != nil {
			t.Fatal(err)
		}
		e := estimate(t, loadModel(t, dir), targets, rank, opts)
		if e.FromCache() || e.CachePath() == previous {
			t.Errorf("%s touched: from cache %v, path unchanged %v", filepath.Base(src.Path), e.FromCache(), e.CachePath() == previous)
		}
		previous = e.CachePath()
	}
}
