package lora

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// mergeFixture names a fixture model and the adapter merged into it.
type mergeFixture struct{ name, model, adapter string }

var mergeFixtures = []mergeFixture{
	{"llama-gqa", "model", "adapter_after_step2"},
	{"qwen2-bias", "model", "adapter_init"}, // q/k/v biases, tied embeddings
}

func (f mergeFixture) dirs(t *testing.T) (modelDir, adapterDir string) {
	dir := fixtures.HF(t, f.name)
	return filepath.Join(dir, f.model), filepath.Join(dir, f.adapter)
}

// referenceMerge computes W + scale B A in float64 for every base weight the
// adapter file adapts, independently of Merge: the base name is the PEFT key
// without its "base_model.model." prefix and ".lora_A" part, and the scale
// comes straight from adapter_config.json.
func referenceMerge(t *testing.T, modelDir, adapterDir string) map[string][]float64 {
	t.Helper()
	var pc struct {
		R         int     `json:"r"`
		LoraAlpha float64 `json:"lora_alpha"`
		UseRSLoRA bool    `json:"use_rslora"`
	}
	raw, err := os.ReadFile(filepath.Join(adapterDir, "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &pc); err != nil {
		t.Fatal(err)
	}
	scale := pc.LoraAlpha / float64(pc.R)
	if pc.UseRSLoRA {
		scale = pc.LoraAlpha / math.Sqrt(float64(pc.R))
	}
	base, err := safetensors.Open(filepath.Join(modelDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	adapter, err := safetensors.Open(filepath.Join(adapterDir, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer adapter.Close()
	want := map[string][]float64{}
	for _, aName := range adapter.Names() {
		module, ok := strings.CutSuffix(aName, ".lora_A.weight")
		if !ok {
			continue
		}
		wName := strings.TrimPrefix(module, "base_model.model.") + ".weight"
		info, err := base.Info(wName)
		if err != nil {
			t.Fatal(err)
		}
		w, _ := base.ReadFloat32(wName)
		a, _ := adapter.ReadFloat32(aName)
		b, _ := adapter.ReadFloat32(module + ".lora_B.weight")
		out, in := info.Shape[0], info.Shape[1]
		merged := make([]float64, len(w))
		for o := range out {
			for i := range in {
				var sum float64
				for r := range pc.R {
					sum += float64(b[o*pc.R+r]) * float64(a[r*in+i])
				}
				merged[o*in+i] = float64(w[o*in+i]) + scale*sum
			}
		}
		want[wName] = merged
	}
	return want
}

// relErrL2 is ||got - want|| / ||want||.
func relErrL2[T float32 | float64](got []float32, want []T) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

func readTensor(t *testing.T, r safetensors.Reader, name string) ([]float32, []byte, safetensors.TensorInfo) {
	t.Helper()
	info, err := r.Info(name)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := r.ReadRaw(name)
	if err != nil {
		t.Fatal(err)
	}
	values, err := r.ReadFloat32(name)
	if err != nil {
		t.Fatal(err)
	}
	return values, raw, info
}

func mustMerge(t *testing.T, modelDir, adapterDir, out string, opts MergeOptions) MergeReport {
	t.Helper()
	report, err := Merge(context.Background(), modelDir, adapterDir, out, opts)
	if err != nil {
		t.Fatal(err)
	}
	return report
}

func filesEqual(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// copyFlatDir copies the files of a flat directory.
func copyFlatDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The merged weights are W + scale B A to float32 precision, every other
// tensor and file is copied byte for byte, and nothing else is written.
func TestMergeMatchesFloat64Reference(t *testing.T) {
	for _, fx := range mergeFixtures {
		t.Run(fx.name, func(t *testing.T) {
			fixtureModel, adapterDir := fx.dirs(t)
			// A real HF tokenizer beside the model, to see it copied.
			modelDir := filepath.Join(t.TempDir(), "model")
			copyFlatDir(t, fixtureModel, modelDir)
			tokenizer := filepath.Join(fixtures.Dir(t), "tokenizers", "llama2.json")
			data, err := os.ReadFile(tokenizer)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(modelDir, "tokenizer.json"), data, 0o644)

			out := filepath.Join(t.TempDir(), "merged")
			report := mustMerge(t, modelDir, adapterDir, out, MergeOptions{})
			want := referenceMerge(t, modelDir, adapterDir)
			if len(report.Merged) != len(want) || len(want) == 0 {
				t.Fatalf("merged %d weights, the adapter has %d", len(report.Merged), len(want))
			}
			wantFiles := []string{"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"}
			entries, _ := os.ReadDir(out)
			var got []string
			for _, e := range entries {
				got = append(got, e.Name())
			}
			if !slices.Equal(sortedCopy(got), sortedCopy(wantFiles)) || !slices.Equal(sortedCopy(report.Files), sortedCopy(wantFiles)) {
				t.Errorf("output holds %v (report %v), want %v", got, report.Files, wantFiles)
			}
			for _, name := range wantFiles[1:] {
				if !filesEqual(t, filepath.Join(modelDir, name), filepath.Join(out, name)) {
					t.Errorf("%s was changed", name)
				}
			}

			base, err := safetensors.Open(filepath.Join(modelDir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer base.Close()
			merged, err := safetensors.Open(filepath.Join(out, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Close()
			if !slices.Equal(base.Names(), merged.Names()) {
				t.Fatalf("tensors %v, want %v", merged.Names(), base.Names())
			}
			if md := merged.Metadata(); md["format"] != "pt" {
				t.Errorf("metadata %v: transformers wants format pt", md)
			}
			for _, name := range base.Names() {
				got, gotRaw, info := readTensor(t, merged, name)
				orig, origRaw, origInfo := readTensor(t, base, name)
				if info.Dtype != origInfo.Dtype || !slices.Equal(info.Shape, origInfo.Shape) {
					t.Errorf("%s: %s %v, want %s %v", name, info.Dtype, info.Shape, origInfo.Dtype, origInfo.Shape)
				}
				ref, adapted := want[name]
				if !adapted {
					if !bytes.Equal(gotRaw, origRaw) {
						t.Errorf("%s is not adapted but changed", name)
					}
					continue
				}
				if e := relErrL2(got, ref); e > 1e-6 {
					t.Errorf("%s: relative error %.3g against W + scale B A in float64", name, e)
				}
				// The check above can fail: the adapter moves W well beyond it.
				if e := relErrL2(orig, ref); e < 1e-4 {
					t.Errorf("%s: the adapter changes W by only %.3g; the fixture proves nothing", name, e)
				}
			}
		})
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// editedAdapter copies an adapter directory with its config edited.
func editedAdapter(t *testing.T, src string, edit func(cfg map[string]any)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "adapter")
	copyFlatDir(t, src, dir)
	cfgPath := filepath.Join(dir, ConfigFileName)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	raw, _ = json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// PEFT's use_rslora scales by alpha/sqrt(r).
func TestMergeRSLoRAScale(t *testing.T) {
	modelDir, src := mergeFixtures[0].dirs(t)
	adapterDir := editedAdapter(t, src, func(cfg map[string]any) { cfg["use_rslora"] = true })

	out := filepath.Join(t.TempDir(), "merged")
	report := mustMerge(t, modelDir, adapterDir, out, MergeOptions{})
	if report.Scale != 16/math.Sqrt(8) {
		t.Errorf("scale %g, want 16/sqrt(8)", report.Scale)
	}
	merged, err := safetensors.Open(filepath.Join(out, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer merged.Close()
	for name, ref := range referenceMerge(t, modelDir, adapterDir) {
		got, _ := merged.ReadFloat32(name)
		if e := relErrL2(got, ref); e > 1e-6 {
			t.Errorf("%s: relative error %.3g", name, e)
		}
	}
}

// Above the shard size the checkpoint is split as transformers does, with an
// index that the reader (and transformers) follows, and the same tensors.
func TestMergeShardsAboveThreshold(t *testing.T) {
	modelDir, adapterDir := mergeFixtures[0].dirs(t)
	single := filepath.Join(t.TempDir(), "single")
	mustMerge(t, modelDir, adapterDir, single, MergeOptions{})
	sharded := filepath.Join(t.TempDir(), "sharded")
	const maxBytes = 100_000 // the 820 kB fixture in about nine shards; embeddings alone exceed it
	report := mustMerge(t, modelDir, adapterDir, sharded, MergeOptions{MaxShardBytes: maxBytes})

	if _, err := os.Stat(filepath.Join(sharded, "model.safetensors")); err == nil {
		t.Error("sharded output also has model.safetensors")
	}
	raw, err := os.ReadFile(filepath.Join(sharded, "model.safetensors.index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var index struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		t.Fatal(err)
	}
	shards := map[string]bool{}
	for _, f := range index.WeightMap {
		shards[f] = true
	}
	if len(shards) < 3 {
		t.Fatalf("%d shards for an 820 kB checkpoint at %d bytes each", len(shards), maxBytes)
	}
	var total int64
	for f := range shards {
		want := fmt.Sprintf("-of-%05d.safetensors", len(shards))
		if !strings.HasPrefix(f, "model-") || !strings.HasSuffix(f, want) {
			t.Errorf("shard name %s, want model-0000i%s", f, want)
		}
		sf, err := safetensors.Open(filepath.Join(sharded, f))
		if err != nil {
			t.Fatal(err)
		}
		var size int64
		for _, name := range sf.Names() {
			info, _ := sf.Info(name)
			size += info.NumBytes()
		}
		if size > maxBytes && len(sf.Names()) > 1 {
			t.Errorf("%s holds %d bytes in %d tensors, over the %d limit", f, size, len(sf.Names()), maxBytes)
		}
		total += size
		sf.Close()
	}
	if total != index.Metadata.TotalSize || total != report.TensorBytes {
		t.Errorf("total_size %d, report %d, shards hold %d", index.Metadata.TotalSize, report.TensorBytes, total)
	}

	// Same tensors as the unsharded merge, bit for bit, and a valid checkpoint.
	a, err := safetensors.OpenDir(single)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := safetensors.OpenDir(sharded)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !slices.Equal(a.Names(), b.Names()) || len(index.WeightMap) != len(a.Names()) {
		t.Fatalf("sharded tensors %v, index %d, want %v", b.Names(), len(index.WeightMap), a.Names())
	}
	for _, name := range a.Names() {
		_, x, _ := readTensor(t, a, name)
		_, y, _ := readTensor(t, b, name)
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between the sharded and the single-file merge", name)
		}
	}
	cfg, err := model.LoadConfig(sharded)
	if err != nil {
		t.Fatal(err)
	}
	if err := model.CheckCheckpoint(cfg, b); err != nil {
		t.Error(err)
	}
}

// A bf16 merge of an f32 model: every tensor bf16 (unmerged ones rounded by
// the safetensors package's own codec, an independent check of the GPU
// package's), merged ones within bf16 rounding of the float64 reference, and
// config.json saying bfloat16 with its other fields kept.
func TestMergeBF16Output(t *testing.T) {
	for _, fx := range mergeFixtures {
		t.Run(fx.name, func(t *testing.T) {
			modelDir, adapterDir := fx.dirs(t)
			out := filepath.Join(t.TempDir(), "merged")
			mustMerge(t, modelDir, adapterDir, out, MergeOptions{Dtype: safetensors.BF16})
			want := referenceMerge(t, modelDir, adapterDir)

			base, err := safetensors.Open(filepath.Join(modelDir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer base.Close()
			merged, err := safetensors.OpenDir(out)
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Close()
			for _, name := range base.Names() {
				got, raw, info := readTensor(t, merged, name)
				if info.Dtype != safetensors.BF16 {
					t.Fatalf("%s: dtype %s, want BF16", name, info.Dtype)
				}
				if ref, ok := want[name]; ok {
					for i, r := range ref {
						// Half a bf16 ulp is 2^-9 relative; allow one ulp.
						if d := math.Abs(float64(got[i]) - r); d > math.Abs(r)/128+1e-6 {
							t.Fatalf("%s[%d] = %g, want %g within bf16 rounding", name, i, got[i], r)
						}
					}
					continue
				}
				orig, _ := base.ReadFloat32(name)
				wantRaw, err := safetensors.NewFloatTensor(safetensors.BF16, info.Shape, orig)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(raw, wantRaw.Data) {
					t.Errorf("%s is not the bf16 rounding of the original", name)
				}
			}

			var before, after map[string]any
			readJSON := func(path string, v any) {
				raw, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(raw, v); err != nil {
					t.Fatal(err)
				}
			}
			readJSON(filepath.Join(modelDir, "config.json"), &before)
			readJSON(filepath.Join(out, "config.json"), &after)
			if after["dtype"] != "bfloat16" {
				t.Errorf("config dtype %v, want bfloat16", after["dtype"])
			}
			before["dtype"] = "bfloat16"
			if fmt.Sprint(before) != fmt.Sprint(after) {
				t.Errorf("config.json fields changed:\n%v\n%v", before, after)
			}
			cfg, err := model.LoadConfig(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := model.CheckCheckpoint(cfg, merged); err != nil {
				t.Error(err)
			}
		})
	}
}

// A bf16 model keeps its unmerged tensors byte for byte unless asked to
// convert, and converts exactly to f32.
func TestMergeBF16Input(t *testing.T) {
	dir := fixtures.HF(t, "llama-gqa")
	modelDir, adapterDir := filepath.Join(dir, "model-bf16"), filepath.Join(dir, "adapter_after_step2")
	keep := filepath.Join(t.TempDir(), "keep")
	report := mustMerge(t, modelDir, adapterDir, keep, MergeOptions{})
	wide := filepath.Join(t.TempDir(), "f32")
	mustMerge(t, modelDir, adapterDir, wide, MergeOptions{Dtype: safetensors.F32})
	if !filesEqual(t, filepath.Join(modelDir, "config.json"), filepath.Join(keep, "config.json")) {
		t.Error("config.json changed without a dtype conversion")
	}
	base, err := safetensors.OpenDir(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	k, err := safetensors.OpenDir(keep)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	w, err := safetensors.OpenDir(wide)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	want := referenceMerge(t, modelDir, adapterDir)
	for _, name := range base.Names() {
		orig, origRaw, _ := readTensor(t, base, name)
		kept, keptRaw, keptInfo := readTensor(t, k, name)
		widened, _, wideInfo := readTensor(t, w, name)
		if keptInfo.Dtype != safetensors.BF16 || wideInfo.Dtype != safetensors.F32 {
			t.Fatalf("%s: dtypes %s and %s, want BF16 and F32", name, keptInfo.Dtype, wideInfo.Dtype)
		}
		if ref, ok := want[name]; ok {
			if e := relErrL2(widened, ref); e > 1e-6 {
				t.Errorf("%s (f32): relative error %.3g", name, e)
			}
			if e := relErrL2(kept, ref); e > 1.0/256 {
				t.Errorf("%s (bf16): relative error %.3g", name, e)
			}
			continue
		}
		if !bytes.Equal(keptRaw, origRaw) {
			t.Errorf("%s changed in a bf16-to-bf16 merge", name)
		}
		if !slices.Equal(widened, orig) {
			t.Errorf("%s is not the exact f32 widening", name)
		}
	}
	if len(report.Merged) != len(want) {
		t.Errorf("merged %d, want %d", len(report.Merged), len(want))
	}
	var cfg map[string]any
	raw, _ := os.ReadFile(filepath.Join(wide, "config.json"))
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg["dtype"] != "float32" {
		t.Errorf("f32 config.json: %s (%v)", raw, err)
	}
}

// The logits of the merged model equal those of the base model with the
// adapter attached.
func TestMergeKeepsLogits(t *testing.T) {
	for _, fx := range mergeFixtures {
		t.Run(fx.name, func(t *testing.T) {
			modelDir, adapterDir := fx.dirs(t)
			out := filepath.Join(t.TempDir(), "merged")
			mustMerge(t, modelDir, adapterDir, out, MergeOptions{})

			m, err := model.Load(testDevice, modelDir, gpu.F32)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Release()
			base := logitsOf(t, m)
			s, err := Load(m, adapterDir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Release()
			s.Attach(m)
			want := logitsOf(t, m)

			merged, err := model.Load(testDevice, out, gpu.F32)
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Release()
			got := logitsOf(t, merged)
			if e := relErrL2(got, want); e > 1e-5 {
				t.Errorf("merged logits differ from base + adapter by %.3g (relative L2)", e)
			}
			if e := relErrL2(base, want); e < 1e-3 {
				t.Errorf("the adapter moves the logits by only %.3g; the comparison proves nothing", e)
			}
		})
	}
}

func TestMergeRejectsBadInput(t *testing.T) {
	llamaModel, llamaAdapter := mergeFixtures[0].dirs(t)
	qwenModel, qwenAdapter := mergeFixtures[1].dirs(t)
	// Qwen's two-layer adapter restricted to the layers the three-layer llama
	// has: it passes the key checks and fails on shapes (llama's k_proj is
	// narrower, having fewer kv heads).
	qwenOnTwoLayers := editedAdapter(t, qwenAdapter, func(cfg map[string]any) { cfg["layers_to_transform"] = []int{0, 1} })
	merge := func(modelDir, adapterDir, out string, opts MergeOptions) error {
		_, err := Merge(context.Background(), modelDir, adapterDir, out, opts)
		return err
	}
	out := filepath.Join(t.TempDir(), "out")
	for _, c := range []struct {
		name              string
		modelDir, adapter string
		opts              MergeOptions
		want              string
	}{
		{"missing model", filepath.Join(t.TempDir(), "nope"), llamaAdapter, MergeOptions{}, "model directory"},
		{"missing adapter", llamaModel, filepath.Join(t.TempDir(), "nope"), MergeOptions{}, "adapter directory"},
		{"adapter of another shape", llamaModel, qwenOnTwoLayers, MergeOptions{}, "base weight model.layers.0.self_attn.k_proj.weight [32 64]"},
		{"adapter with more layers", qwenModel, llamaAdapter, MergeOptions{}, "layer \"2\" is not one of the model's 2 layers"},
		{"adapter with fewer layers", llamaModel, qwenAdapter, MergeOptions{}, "no weights for base_model.model.model.layers.2"},
		{"adapter as model", llamaAdapter, llamaAdapter, MergeOptions{}, "config.json"},
		{"f16 output", llamaModel, llamaAdapter, MergeOptions{Dtype: safetensors.F16}, "not supported"},
		{"same dir", llamaModel, llamaAdapter, MergeOptions{Force: true}, "is the model directory"},
		{"adapter holding Inf", llamaModel, infAdapter(t, llamaAdapter), MergeOptions{}, "element 0 is +Inf"},
	} {
		target := out
		if c.name == "same dir" {
			target = llamaModel
		}
		err := merge(c.modelDir, c.adapter, target, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
		}
		if c.name == "adapter holding Inf" && err != nil && strings.Contains(err.Error(), "different model") {
			t.Errorf("%s: %v blames the model for a bad value", c.name, err)
		}
		if _, statErr := os.Stat(out); statErr == nil {
			t.Fatalf("%s: a failed merge left %s behind", c.name, out)
		}
	}
	// No temporary directories are left beside the output either.
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("failed merges left %v", entries)
	}

	// A non-empty output is kept unless forced; forcing replaces it whole.
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(out, "stale.txt")
	os.WriteFile(stale, []byte("old"), 0o644)
	if err := merge(llamaModel, llamaAdapter, out, MergeOptions{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("non-empty output: got %v", err)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("refused merge touched the output: %v", err)
	}
	if err := merge(llamaModel, llamaAdapter, out, MergeOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Error("forced merge kept the old contents")
	}
	if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err != nil {
		t.Error(err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("forced merge left %v beside the output", entries)
	}
	// An empty output directory is fine.
	empty := filepath.Join(t.TempDir(), "empty")
	os.MkdirAll(empty, 0o755)
	if err := merge(llamaModel, llamaAdapter, empty, MergeOptions{}); err != nil {
		t.Errorf("empty output directory: %v", err)
	}
}

func TestMergeCancels(t *testing.T) {
	modelDir, adapterDir := mergeFixtures[0].dirs(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "out")
	if _, err := Merge(ctx, modelDir, adapterDir, out, MergeOptions{}); err == nil {
		t.Fatal("a cancelled merge succeeded")
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a cancelled merge left its output")
	}
}

func TestCompareNatural(t *testing.T) {
	names := []string{"model.layers.10.mlp", "model.layers.2.mlp", "lm_head.weight", "model.layers.1.self_attn", "model.embed_tokens.weight"}
	slices.SortFunc(names, compareNatural)
	want := []string{"lm_head.weight", "model.embed_tokens.weight", "model.layers.1.self_attn", "model.layers.2.mlp", "model.layers.10.mlp"}
	if !slices.Equal(names, want) {
		t.Errorf("got %v, want %v", names, want)
	}
}

// --force replaces the output whole, so an output directory that holds the
// model or the adapter must be refused even when forced: the inputs survive.
func TestMergeRefusesOutputHoldingAnInput(t *testing.T) {
	src := fixtures.HF(t, "llama-gqa")
	parent := t.TempDir()
	for _, name := range []string{"model", "adapter_init"} {
		if err := os.CopyFS(filepath.Join(parent, "inputs", name), os.DirFS(filepath.Join(src, name))); err != nil {
			t.Fatal(err)
		}
	}
	modelDir := filepath.Join(parent, "inputs", "model")
	adapterDir := filepath.Join(parent, "inputs", "adapter_init")
	for _, out := range []string{parent, filepath.Join(parent, "inputs")} {
		_, err := Merge(context.Background(), modelDir, adapterDir, out, MergeOptions{Force: true})
		if err == nil || !strings.Contains(err.Error(), "contains the model directory") {
			t.Errorf("--out %s: got %v, want a refusal naming the model directory", out, err)
		}
	}
	for _, dir := range []string{modelDir, adapterDir} {
		if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil && dir == modelDir {
			t.Errorf("the model was touched: %v", err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("an input was removed: %v", err)
		}
	}
	// An output that cannot be created (procfs takes no new directories, even
	// from root) is named as such, not by its temporary name.
	if st, err := os.Stat("/proc/self"); err == nil && st.IsDir() {
		if _, err := Merge(context.Background(), modelDir, adapterDir, "/proc/sparselora-merged", MergeOptions{}); err == nil ||
			!strings.Contains(err.Error(), "cannot create the output directory /proc/sparselora-merged") {
			t.Errorf("unwritable output: got %v", err)
		}
	}
	// A sibling output is fine.
	if _, err := Merge(context.Background(), modelDir, adapterDir, filepath.Join(parent, "merged"), MergeOptions{}); err != nil {
		t.Errorf("sibling output: %v", err)
	}
}

// infAdapter copies an adapter with +Inf as the first element of its first
// tensor.
func infAdapter(t *testing.T, src string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "adapter")
	copyFlatDir(t, src, dir)
	path := filepath.Join(dir, WeightsFileName)
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	tensors := map[string]safetensors.Tensor{}
	for i, name := range f.Names() {
		info, _ := f.Info(name)
		values, err := f.ReadFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			values[0] = float32(math.Inf(1))
		}
		if tensors[name], err = safetensors.NewFloatTensor(safetensors.F32, info.Shape, values); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := safetensors.WriteFile(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}
