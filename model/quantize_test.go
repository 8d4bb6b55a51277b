package model

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model/safetensors"
)

// TestQuantizeAffineRounding checks QuantizeAffine against MLX's algorithm on
// a group worked by hand, and its invariants on random groups: codes in
// range, the edge of larger magnitude represented exactly, the scale's sign
// (negative unless |min| > |max|), and every weight within half a step.
func TestQuantizeAffineRounding(t *testing.T) {
	// 0, 1, .., 31 in 4 bits: |min| <= |max|, so scale = -(31-0)/15, the edge 31
	// gives q0 = rint(31/scale) = -15, scale = 31/-15, bias = 31; code of j is
	// rint((j-31)/scale): 15 for 0, 0 for 31.
	ramp := make([]float32, 32)
	for j := range ramp {
		ramp[j] = float32(j)
	}
	w, err := QuantizeAffine(ramp, 1, 32, Quantization{Bits: 4, GroupSize: 32}, gpu.ScaleF32)
	if err != nil {
		t.Fatal(err)
	}
	if w.Scales[0] != float32(31)/float32(-15) || w.Biases[0] != 31 || w.Code(0, 0) != 15 || w.Code(0, 31) != 0 || w.Code(0, 16) != 7 {
		t.Errorf("ramp: scale %v bias %v codes %d %d %d, want %v 31 15 0 7", w.Scales[0], w.Biases[0], w.Code(0, 0), w.Code(0, 31), w.Code(0, 16), float32(31)/float32(-15))
	}

	rng := rand.New(rand.NewPCG(41, 42))
	for _, bits := range []int{4, 8} {
		for _, group := range []int{32, 64, 128} {
			for _, st := range []gpu.ScaleType{gpu.ScaleF32, gpu.ScaleBF16, gpu.ScaleF16} {
				const out = 5
				in := 2 * group
				values := make([]float32, out*in)
				for i := range values {
					values[i] = float32(rng.NormFloat64()*0.05 + 0.01*float64(i%7-3))
				}
				w, err := QuantizeAffine(values, out, in, Quantization{Bits: bits, GroupSize: group}, st)
				if err != nil {
					t.Fatal(err)
				}
				deq := w.Dequantize()
				for r := range out {
					for g := range in / group {
						vals := values[r*in+g*group : r*in+(g+1)*group]
						lo, hi := vals[0], vals[0]
						for _, v := range vals {
							lo, hi = min(lo, v), max(hi, v)
						}
						s, b := w.Scales[r*in/group+g], w.Biases[r*in/group+g]
						if negative := !(math.Abs(float64(lo)) > math.Abs(float64(hi))); negative != (s < 0) {
							t.Fatalf("%d-bit g%d %s row %d group %d: min %v max %v, scale %v has the wrong sign", bits, group, st, r, g, lo, hi, s)
						}
						edge := hi
						if s > 0 {
							edge = lo
						}
						if st == gpu.ScaleF32 && b != edge {
							t.Fatalf("%d-bit g%d row %d group %d: bias %v, want the edge %v", bits, group, r, g, b, edge)
						}
						for j, v := range vals {
							c := g*group + j
							if w.Code(r, c) >= 1<<bits {
								t.Fatalf("code out of range")
							}
							// Half a step, plus how far v lies outside the range the codes reach (MLX
							// makes the edge exact, so the other end may fall short and clamp), plus the
							// rounding of scale and bias to 16 bits over the code range.
							n := float64(int(1)<<bits - 1)
							repLo, repHi := min(float64(b), float64(b)+n*float64(s)), max(float64(b), float64(b)+n*float64(s))
							tol := math.Abs(float64(s))*0.5001 + 1e-6 + max(0, repLo-float64(v), float64(v)-repHi)
							if st != gpu.ScaleF32 {
								tol += math.Abs(float64(s))*float64(int(1)<<bits)/256 + math.Abs(float64(b))/256
							}
							if d := math.Abs(float64(deq[r*in+c] - v)); d > tol {
								t.Fatalf("%d-bit g%d %s (%d, %d): %v dequantizes to %v, off by %g > %g", bits, group, st, r, c, v, deq[r*in+c], d, tol)
							}
						}
					}
				}
			}
		}
	}
}

// quantizedFixture writes the llama-gqa fixture quantized to 4 bits in groups
// of 32 (MLX's format) and returns its directory.
func quantizedFixture(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "q4")
	if _, err := QuantizeCheckpoint(filepath.Join(fixtures.HF(t, "llama-gqa"), "model"), dir, Quantization{Bits: 4, GroupSize: 32}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestQuantizedCheckpointRejectsBadInput checks that a malformed MLX
// checkpoint fails before any weight is uploaded, with an error naming the
// tensor (or config field) and the expected shape.
func TestQuantizedCheckpointRejectsBadInput(t *testing.T) {
	src := quantizedFixture(t)
	if _, err := verifyDir(t, src); err != nil {
		t.Fatalf("the quantized fixture itself: %v", err)
	}
	const q = "model.layers.0.self_attn.q_proj"
	replace := func(name string, dtype safetensors.Dtype, shape ...int) func(map[string]safetensors.Tensor) {
		return func(ts map[string]safetensors.Tensor) {
			n := 1
			for _, d := range shape {
				n *= d
			}
			ts[name] = safetensors.Tensor{Dtype: dtype, Shape: shape, Data: make([]byte, n*dtype.Size())}
		}
	}
	setQuant := func(key string, v any) func(map[string]any) {
		return func(c map[string]any) { c["quantization"].(map[string]any)[key] = v }
	}
	for _, c := range []struct {
		name    string
		config  func(map[string]any)
		tensors func(map[string]safetensors.Tensor)
		want    []string
	}{
		{"codes of the wrong width", noEdit[map[string]any], replace(q+".weight", safetensors.U32, 64, 9),
			[]string{q + ".weight", "[64 9]", "want [64 8]"}},
		{"codes not U32", noEdit[map[string]any], replace(q+".weight", safetensors.F32, 64, 8),
			[]string{q + ".weight", "want U32"}},
		{"scales of the wrong shape", noEdit[map[string]any], replace(q+".scales", safetensors.F32, 64, 3),
			[]string{q + ".scales", "[64 3]", "want [64 2]"}},
		{"biases missing", noEdit[map[string]any], func(ts map[string]safetensors.Tensor) { delete(ts, q+".biases") },
			[]string{q + ".biases", "missing", "[64 2]"}},
		{"group size not dividing the input size", setQuant("group_size", 128), noEdit[map[string]safetensors.Tensor],
			[]string{"lm_head.scales", "group size 128", "input size 64", "lm_head.weight [512 64]"}},
		{"override naming no module", setQuant("model.layers.7.mlp.up_proj", false), noEdit[map[string]safetensors.Tensor],
			[]string{"quantization.model.layers.7.mlp.up_proj", "names no quantizable module"}},
		{"override group not dividing", setQuant("model.layers.0.mlp.down_proj", map[string]any{"bits": 4, "group_size": 32}), noEdit[map[string]safetensors.Tensor],
			[]string{"model.layers.0.mlp.down_proj", "group size 32", "176"}},
		{"unsupported bits", setQuant("bits", 3), noEdit[map[string]safetensors.Tensor],
			[]string{"quantization.bits", "3 bits"}},
		{"unsupported mode", setQuant("mode", "mxfp4"), noEdit[map[string]safetensors.Tensor],
			[]string{"quantization.mode", "mxfp4"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := checkpointCopy(t, src, c.config, c.tensors)
			m, _, err := LoadWithOptions(testDevice, dir, LoadOptions{DType: gpu.F32})
			if err == nil {
				m.Release()
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// WeightBytes with the checkpoint's scale type (CheckpointScaleDType) counts
// what loading allocates: an f32 checkpoint quantized at load with --bf16
// keeps f32 scales and biases (the checkpoint's) and bf16 float matrices
// (down_proj, whose 176 inputs groups of 32 do not divide), and an
// MLX-quantized checkpoint loads as written, per-module overrides included;
// the embedding table kept in host memory is not counted.
func TestWeightBytesCountsQuantizedLoad(t *testing.T) {
	src := filepath.Join(fixtures.HF(t, "llama-gqa"), "model")
	q := Quantization{Bits: 4, GroupSize: 32}
	// An MLX checkpoint whose config leaves layer 0's q_proj float.
	const float = "model.layers.0.self_attn.q_proj"
	mixed := checkpointCopy(t, quantizedFixture(t),
		func(c map[string]any) { c["quantization"].(map[string]any)[float] = false },
		func(ts map[string]safetensors.Tensor) {
			codes := ts[float+".weight"]
			out, in := codes.Shape[0], codes.Shape[1]*32/q.Bits
			ts[float+".weight"] = safetensors.Tensor{Dtype: safetensors.F32, Shape: []int{out, in}, Data: make([]byte, 4*out*in)}
			delete(ts, float+".scales")
			delete(ts, float+".biases")
		})
	for _, c := range []struct {
		name string
		dir  string
		opts LoadOptions
	}{
		{"f32 checkpoint, --bf16 --quantize 4", src, LoadOptions{DType: gpu.BF16, Quantize: &q}},
		{"MLX-quantized checkpoint", quantizedFixture(t), LoadOptions{DType: gpu.F32}},
		{"f32 checkpoint, --bf16 --quantize 4, host embedding", src, LoadOptions{DType: gpu.BF16, Quantize: &q, HostEmbedding: true}},
		{"MLX-quantized checkpoint, host embedding", quantizedFixture(t), LoadOptions{DType: gpu.F32, HostEmbedding: true}},
		{"MLX-quantized checkpoint, one module float by override", mixed, LoadOptions{DType: gpu.F32}},
	} {
		scales, err := CheckpointScaleDType(c.dir)
		if err != nil {
			t.Fatal(err)
		}
		base := testDevice.LiveBytes()
		m, _, err := LoadWithOptions(testDevice, c.dir, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		got := testDevice.LiveBytes() - base
		cfg := m.Config
		m.Release()
		if c.opts.HostEmbedding && m.HostEmbed == nil {
			t.Errorf("%s: the embedding table is not in host memory", c.name)
		}
		if want := cfg.WeightBytes(c.opts.DType, scales, q, c.opts.HostEmbedding); uint64(got) != want {
			t.Errorf("%s: allocated %d bytes, WeightBytes %d (scales %s)", c.name, got, want, scales)
		}
	}
}
