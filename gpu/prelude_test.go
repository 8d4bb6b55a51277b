package gpu_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/shaders"
)

// preludeWorkgroup is the WORKGROUP_SIZE of the prelude's test kernels.
const preludeWorkgroup = 64

// widenKernel widens element e of the packed words four ways: bf16_at, f16_at,
// and bf16_pair and f16_pair picking e's half.
const widenKernel = `
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let e = flat_element(workgroup, lane);
    let n = 2u * arrayLength(&words);
    if (e >= n) {
        return;
    }
    let word = words[e >> 1u];
    let odd = (e & 1u) == 1u;
    out[e] = bf16_at(word, e);
    out[n + e] = f16_at(word, e);
    let bf = bf16_pair(word);
    out[2u * n + e] = select(bf.x, bf.y, odd);
    let hf = f16_pair(word);
    out[3u * n + e] = select(hf.x, hf.y, odd);
}
`

// f16Value decodes a normal IEEE half-precision number.
func f16Value(h uint16) float64 {
	v := math.Ldexp(1+float64(h&0x3ff)/1024, int(h>>10&0x1f)-15)
	if h&0x8000 != 0 {
		return -v
	}
	return v
}

func TestPreludeWidensPackedHalves(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const words = 501 // 1002 elements: 16 workgroups, laid out 5 x 4
	halves := make([]uint16, 2*words)
	for i := range halves {
		for {
			h := uint16(rng.Uint32())
			bfExp, f16Exp := h>>7&0xff, h>>10&0x1f
			// Normal numbers both ways: zero exponents are subnormal, all-ones
			// infinite or NaN.
			if bfExp != 0 && bfExp != 0xff && f16Exp != 0 && f16Exp != 0x1f {
				halves[i] = h
				break
			}
		}
	}
	raw := make([]byte, 4*words)
	for i := range words {
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(halves[2*i])|uint32(halves[2*i+1])<<16)
	}
	in, err := testDevice.NewBuffer(uint64(len(raw)), "packed halves")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Release()
	if err := in.Write(0, raw); err != nil {
		t.Fatal(err)
	}
	n := len(halves)
	out := gputest.Poisoned(t, testDevice, 4*n)
	defer out.Release()
	k, err := gpu.CompileWithPrelude(testDevice, "widen.wgsl", widenKernel, gpu.U32("WORKGROUP_SIZE", preludeWorkgroup))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Release()
	gx, gy, err := gpu.SplitGrid(uint64((n+preludeWorkgroup-1)/preludeWorkgroup), 5)
	if err != nil {
		t.Fatal(err)
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := rec.Dispatch(gpu.KindElementwise, k, nil, []gpu.Binding{gpu.Bind(in), gpu.Bind(out.Buf)}, gx, gy, 1); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	got := gputest.Download(t, out)
	for e, h := range halves {
		bf := float64(math.Float32frombits(uint32(h) << 16))
		f := f16Value(h)
		for i, want := range []float64{bf, f, bf, f} {
			if g := float64(got[i*n+e]); g != want {
				t.Fatalf("element %d (half %#04x), widening %d of [bf16_at f16_at bf16_pair f16_pair]: got %v, want %v",
					e, h, i, g, want)
			}
		}
	}
}

// reduceKernel gives each row of a [rows, cols] input one workgroup, reduces it
// three times back to back (sum, max, sum of squares) and has every invocation
// write what it got.
const reduceKernel = `
@group(0) @binding(0) var<uniform> p: vec4<u32>; // rows, cols
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let row = flat_workgroup(workgroup);
    if (row >= p.x) {
        return;
    }
    var sum = 0.0;
    var top = -3.0e38;
    var squares = 0.0;
    for (var c = lane; c < p.y; c += WORKGROUP_SIZE) {
        let v = x[row * p.y + c];
        sum += v;
        top = max(top, v);
        squares += v * v;
    }
    let at = 3u * (row * WORKGROUP_SIZE + lane);
    out[at] = workgroup_sum(lane, sum);
    out[at + 1u] = workgroup_max(lane, top);
    out[at + 2u] = workgroup_sum(lane, squares);
}
`

// TestPreludeWorkgroupReductions checks workgroup_sum and workgroup_max on
// both of their paths (reductionDevices), at workgroup sizes below, at and
// above lavapipe's subgroup size of 8 (a subgroup may be larger than the
// workgroup, or a fraction of it).
func TestPreludeWorkgroupReductions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const rows, cols = 5, 333
	data := gputest.RandFloats(rng, rows*cols)
	for _, dev := range reductionDevices(t) {
		for _, size := range []int{1, 4, 8, 64, 256} {
			checkWorkgroupReductions(t, dev, size, data, rows, cols)
		}
	}
}

func checkWorkgroupReductions(t *testing.T, dev *gpu.Device, size int, data []float32, rows, cols int) {
	t.Helper()
	x := gputest.Upload(t, dev, gpu.F32, data, rows, cols)
	defer x.Release()
	out := gputest.Poisoned(t, dev, rows*size*3)
	defer out.Release()
	k, err := gpu.CompileWithPrelude(dev, "reduce.wgsl", reduceKernel, gpu.U32("WORKGROUP_SIZE", size))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Release()
	gx, gy, err := gpu.SplitGrid(uint64(rows), 3) // 3 x 2: one workgroup past the last row
	if err != nil {
		t.Fatal(err)
	}
	rec := dev.NewRecorder()
	defer rec.Release()
	if err := rec.Dispatch(gpu.KindElementwise, k, gpu.PackParams(uint32(rows), uint32(cols)), []gpu.Binding{gpu.Bind(x.Buf), gpu.Bind(out.Buf)}, gx, gy, 1); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	got := gputest.Download(t, out)
	for r := range rows {
		var sum, squares float64
		top := math.Inf(-1)
		for _, v := range data[r*cols : (r+1)*cols] {
			sum += float64(v)
			top = max(top, float64(v))
			squares += float64(v) * float64(v)
		}
		for lane := range size {
			at := 3 * (r*size + lane)
			where := fmt.Sprintf("subgroups %v, workgroup of %d: row %d lane %d", dev.HasSubgroups, size, r, lane)
			if g := float64(got[at]); !(math.Abs(g-sum) <= 1e-5*squares) {
				t.Fatalf("%s: workgroup_sum %v, want %v", where, g, sum)
			}
			if g := float64(got[at+1]); g != top {
				t.Fatalf("%s: workgroup_max %v, want %v", where, g, top)
			}
			if g := float64(got[at+2]); !(math.Abs(g-squares) <= 1e-5*squares) {
				t.Fatalf("%s: second workgroup_sum %v, want %v", where, g, squares)
			}
		}
	}
}

func TestCompileErrorsNameThePartAndItsLine(t *testing.T) {
	const broken = "@compute @workgroup_size(WORKGROUP_SIZE)\nfn main() {\n    let x: f32 = undefined_name;\n}\n"
	_, err := gpu.CompileWithPrelude(testDevice, "broken.wgsl", broken, gpu.U32("WORKGROUP_SIZE", 1), gpu.U32("OTHER", 2))
	if err == nil || !strings.Contains(err.Error(), "broken.wgsl:3:") || !strings.Contains(err.Error(), "undefined_name") {
		t.Fatalf("want the error at broken.wgsl:3, got %v", err)
	}

	_, err = gpu.CompileWithPrelude(testDevice, "fine.wgsl", "@compute @workgroup_size(1)\nfn main() {}\n",
		gpu.Const{Name: "BAD", Value: "undefined_value"})
	if err == nil || !strings.Contains(err.Error(), "constants:1:") {
		t.Fatalf("want the error at constants:1, got %v", err)
	}

	// Without WORKGROUP_SIZE the prelude's reductions do not compile: the error
	// must point at a prelude line that uses it.
	_, err = gpu.CompileWithPrelude(testDevice, "fine.wgsl", "@compute @workgroup_size(1)\nfn main() {}\n")
	m := regexp.MustCompile(`prelude\.wgsl:(\d+):`).FindStringSubmatch(errorText(err))
	if m == nil {
		t.Fatalf("want an error in prelude.wgsl, got %v", err)
	}
	prelude, perr := shaders.Source("prelude.wgsl")
	if perr != nil {
		t.Fatal(perr)
	}
	line, _ := strconv.Atoi(m[1])
	lines := strings.Split(prelude, "\n")
	if line < 1 || line > len(lines) || !strings.Contains(lines[line-1], "WORKGROUP_SIZE") {
		t.Fatalf("error at prelude.wgsl:%d, which does not use WORKGROUP_SIZE: %v", line, err)
	}
}

// errorText is err's message, or "" for nil.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// affineKernel reads every element of a quantized weight [rows, in] with
// load_affine into out.
const affineKernel = `
@group(0) @binding(0) var<uniform> p: vec4<u32>; // rows, in, row words, scale offset
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let e = flat_element(workgroup, lane);
    if (e >= p.x * p.y) {
        return;
    }
    let r = e / p.y;
    out[e] = load_affine(&words, r * p.z, p.w, e - r * p.y, AFFINE_BITS, AFFINE_GROUP, AFFINE_SCALES);
}
`

// TestPreludeLoadsAffine checks load_affine against the float64 weights of
// every format, with negative scales and, for f16, subnormal scales and
// biases (which unpack2x16float may flush to zero, so load_affine must not
// use it).
func TestPreludeLoadsAffine(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, f := range gputest.AffineFormats() {
		rows, in := 7, 2*f.Group
		w := gputest.RandAffine(rng, rows, in, f)
		if f.Scales == gpu.ScaleF16 {
			for i := 0; i < len(w.Scales); i += 3 {
				sub := safetensors.HalfToFloat32(uint16(1+rng.IntN(1023)) | uint16(rng.IntN(2))<<15)
				w.Scales[i], w.Biases[len(w.Biases)-1-i] = sub, sub
			}
		}
		want := gputest.DequantizeF64(w)
		weight := gputest.UploadAffine(t, testDevice, w)
		out := gputest.Poisoned(t, testDevice, rows*in)
		k, err := gpu.CompileWithPrelude(testDevice, "affine_test.wgsl", affineKernel, gpu.U32("WORKGROUP_SIZE", preludeWorkgroup),
			gpu.U32("AFFINE_BITS", f.Bits), gpu.U32("AFFINE_GROUP", f.Group), gpu.U32("AFFINE_SCALES", int(f.Scales)))
		if err != nil {
			t.Fatal(err)
		}
		params := gpu.PackParams(uint32(rows), uint32(in), uint32(f.RowWords(in)), uint32(f.CodeWords(in)))
		rec := testDevice.NewRecorder()
		if err := rec.Dispatch(gpu.KindElementwise, k, params, []gpu.Binding{gpu.Bind(weight.Buf), gpu.Bind(out.Buf)},
			uint32((rows*in+preludeWorkgroup-1)/preludeWorkgroup), 1, 1); err != nil {
			t.Fatal(err)
		}
		gputest.Submit(t, rec)
		got := gputest.Download(t, out)
		groups := in / f.Group
		for e := range want {
			// One rounding of s*q + b (a fused multiply-add), or two where fma is
			// not fused (lavapipe): then s*q is rounded first, which counts when
			// s*q and b cancel.
			r, c := e/in, e%in
			s, b := float64(w.Scales[r*groups+c/f.Group]), float64(w.Biases[r*groups+c/f.Group])
			mag := math.Abs(s)*float64(w.Code(r, c)) + math.Abs(b)
			if d := math.Abs(float64(got[e]) - want[e]); !(d <= 1.2e-7*mag+1e-38) {
				t.Fatalf("%s element %d: got %v, want %v", f, e, got[e], want[e])
			}
		}
		rec.Release()
		k.Release()
		out.Release()
		weight.Release()
	}
}

func TestSelectSectionsKeepsLineNumbers(t *testing.T) {
	const src = "a\n//#if subgroups\nb\n  //#else\nc\n//#endif\nd\n"
	for _, c := range []struct {
		has  bool
		want string
	}{{true, "a\n\nb\n\n\n\nd\n"}, {false, "a\n\n\n\nc\n\nd\n"}} {
		got, err := gpu.SelectSections("x.wgsl", src, map[string]bool{"subgroups": c.has})
		if err != nil || got != c.want {
			t.Errorf("subgroups %v: got %q, %v; want %q", c.has, got, err, c.want)
		}
	}
	for _, c := range []struct{ src, want string }{
		{"a\n//#if shader-f16\n//#endif\n", `x.wgsl:2: //#if "shader-f16": not a shader feature`},
		{"//#if subgroups\n//#if subgroups\n//#endif\n", "x.wgsl:2: //#if inside the //#if of line 1"},
		{"a\n\n//#if subgroups\nb\n", "x.wgsl:3: //#if without //#endif"},
		{"//#else\n", "x.wgsl:1: unexpected //#else"},
		{"//#if subgroups\n//#else\n//#else\n//#endif\n", "x.wgsl:3: unexpected //#else"},
		{"//#endif\n", "x.wgsl:1: unexpected //#endif"},
		{"//#ifdef subgroups\n", "x.wgsl:1: unexpected //#ifdef subgroups"},
	} {
		_, err := gpu.SelectSections("x.wgsl", c.src, map[string]bool{"subgroups": true})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error containing %q", c.src, err, c.want)
		}
	}
}

// TestCompileErrorsNameTheLineOnBothPaths checks that the enable directives
// and the dropped sections of a device's features leave every line where it
// is: an error after a section, in a kept or a dropped branch, names the
// file's own line on both reductionDevices.
func TestCompileErrorsNameTheLineOnBothPaths(t *testing.T) {
	const broken = "//#if subgroups\nconst PICK = 1u;\n//#else\nconst PICK = 2u;\n//#endif\n" +
		"@compute @workgroup_size(WORKGROUP_SIZE)\nfn main() {\n    let x: f32 = undefined_name;\n}\n"
	for _, dev := range reductionDevices(t) {
		_, err := gpu.CompileWithPrelude(dev, "broken.wgsl", broken, gpu.U32("WORKGROUP_SIZE", 4))
		if err == nil || !strings.Contains(err.Error(), "broken.wgsl:8:") || !strings.Contains(err.Error(), "undefined_name") {
			t.Errorf("subgroups %v: want the error at broken.wgsl:8, got %v", dev.HasSubgroups, err)
		}
		_, err = gpu.CompileWithPrelude(dev, "bad_section.wgsl", "\n//#if subgroups\n", gpu.U32("WORKGROUP_SIZE", 4))
		if err == nil || !strings.Contains(err.Error(), "bad_section.wgsl:2: //#if without //#endif") {
			t.Errorf("subgroups %v: want the unclosed section named, got %v", dev.HasSubgroups, err)
		}
	}
}

// layoutRecord is what the subgroup layout probe records for a workgroup of
// size lanes whose lane l is in subgroup group(l): per lane, the subgroup's
// first lane, its size and the lane's rank in it.
func layoutRecord(size int, group func(lane int) int) []byte {
	first, count, rank := map[int]int{}, map[int]int{}, make([]int, size)
	for l := range size {
		g := group(l)
		if _, ok := first[g]; !ok {
			first[g] = l
		}
		rank[l] = count[g]
		count[g]++
	}
	raw := make([]byte, 12*size)
	for l := range size {
		for i, v := range []int{first[group(l)], count[group(l)], rank[l]} {
			binary.LittleEndian.PutUint32(raw[4*(3*l+i):], uint32(v))
		}
	}
	return raw
}

func TestSubgroupLayoutCheck(t *testing.T) {
	for _, c := range []struct {
		name  string
		group func(lane int) int
		ok    bool
	}{
		{"blocks of 8", func(l int) int { return l / 8 }, true},
		{"one subgroup", func(int) int { return 0 }, true},
		{"interleaved", func(l int) int { return l % 8 }, false},
		{"blocks of 8 from lane 4", func(l int) int { return (l + 4) / 8 }, false},
		{"a block of 16, then of 8", func(l int) int {
			if l < 16 {
				return 0
			}
			return l / 8
		}, false},
		{"reversed blocks", func(l int) int { return 7 - l/8 }, true},
	} {
		err := gpu.CheckSubgroupLayout(64, layoutRecord(64, c.group))
		if (err == nil) != c.ok {
			t.Errorf("%s: got %v, want ok %v", c.name, err, c.ok)
		}
	}
	// Ranks out of lane order within blocks.
	raw := layoutRecord(16, func(l int) int { return l / 8 })
	binary.LittleEndian.PutUint32(raw[4*(3*1+2):], 2)
	binary.LittleEndian.PutUint32(raw[4*(3*2+2):], 1)
	if err := gpu.CheckSubgroupLayout(16, raw); err == nil {
		t.Error("swapped ranks passed")
	}
}
