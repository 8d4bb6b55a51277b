package gguf

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// sampleMeta has one value of every type, arrays of every element type and
// an alignment other than the default.
func sampleMeta(align uint32) []KV {
	return []KV{
		{"general.architecture", "llama"},
		{KeyAlignment, align},
		{"u8", uint8(7)}, {"i8", int8(-7)}, {"u16", uint16(65000)}, {"i16", int16(-32000)},
		{"u32", uint32(1 << 31)}, {"i32", int32(-5)}, {"f32", float32(1.5e-5)}, {"bool", true},
		{"u64", uint64(1 << 60)}, {"i64", int64(-1 << 60)}, {"f64", math.Pi}, {"empty", ""},
		{"a.u8", Array{TypeUint8, []uint8{1, 2}}}, {"a.i8", Array{TypeInt8, []int8{-1}}},
		{"a.u16", Array{TypeUint16, []uint16{3}}}, {"a.i16", Array{TypeInt16, []int16{-3}}},
		{"a.u32", Array{TypeUint32, []uint32{4}}}, {"a.i32", Array{TypeInt32, []int32{1, 3, 1}}},
		{"a.f32", Array{TypeFloat32, []float32{-0.5, 2}}}, {"a.bool", Array{TypeBool, []bool{true, false}}},
		{"a.u64", Array{TypeUint64, []uint64{5}}}, {"a.i64", Array{TypeInt64, []int64{-5}}},
		{"a.f64", Array{TypeFloat64, []float64{0.25}}}, {"a.str", Array{TypeString, []string{"a b", "", "ĠĊ"}}},
		{"a.empty", Array{TypeString, []string{}}},
	}
}

func writeFile(t *testing.T, meta []KV, tensors []Tensor) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, meta, tensors); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, buf.Bytes()
}

func randomValues(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

func TestWriteReadRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, align := range []uint32{32, 64} {
		vals := randomValues(rng, 3*64)
		var tensors []Tensor
		for _, typ := range []TensorType{F32, F16, BF16, Q8_0, Q4_0} {
			data, err := Encode(typ, vals)
			if err != nil {
				t.Fatal(err)
			}
			tensors = append(tensors, Tensor{Name: "t." + typ.String(), Dims: []int64{64, 3}, Type: typ,
				Data: func() ([]byte, error) { return data, nil }})
		}
		tensors = append(tensors, Tensor{Name: "odd", Dims: []int64{5}, Type: F32,
			Data: func() ([]byte, error) { return make([]byte, 20), nil }})
		meta := sampleMeta(align)
		path, image := writeFile(t, meta, tensors)
		g, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g.Metadata, meta) {
			t.Fatalf("metadata:\n got %v\nwant %v", g.Metadata, meta)
		}
		if g.Alignment != int64(align) || g.DataStart()%int64(align) != 0 {
			t.Fatalf("alignment %d, data at %d", g.Alignment, g.DataStart())
		}
		for _, tt := range tensors {
			info, ok := g.Tensor(tt.Name)
			if !ok || info.Offset%int64(align) != 0 || !reflect.DeepEqual(info.Dims, tt.Dims) || info.Type != tt.Type {
				t.Fatalf("tensor %s: %+v", tt.Name, info)
			}
			raw, err := g.ReadRaw(tt.Name)
			want, _ := tt.Data()
			if err != nil || !bytes.Equal(raw, want) {
				t.Fatalf("tensor %s: raw bytes differ (%v)", tt.Name, err)
			}
		}
		// Rewriting what was read gives the same bytes.
		var again []Tensor
		for _, info := range g.Tensors {
			again = append(again, Tensor{Name: info.Name, Dims: info.Dims, Type: info.Type,
				Data: func() ([]byte, error) { return g.ReadRaw(info.Name) }})
		}
		var buf bytes.Buffer
		if err := Write(&buf, g.Metadata, again); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), image) {
			t.Fatal("read then written: bytes differ")
		}
		if int64(len(image))%int64(align) != 0 {
			t.Fatalf("file of %d bytes is not padded to %d", len(image), align)
		}
		g.Close()
	}
}

func TestTypedAccessorsNameKeyAndTypes(t *testing.T) {
	path, _ := writeFile(t, sampleMeta(32), nil)
	g, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if v, err := g.Uint32("u32"); err != nil || v != 1<<31 {
		t.Fatal(v, err)
	}
	if v, err := g.Strings("a.str"); err != nil || len(v) != 3 {
		t.Fatal(v, err)
	}
	for _, c := range []struct {
		call func() error
		want string
	}{
		{func() error { _, err := g.Uint32("i32"); return err }, `"i32" is i32, want u32`},
		{func() error { _, err := g.Float32("missing"); return err }, `"missing" missing`},
		{func() error { _, err := g.Strings("a.i32"); return err }, `"a.i32" is an array of i32, want an array of string`},
		{func() error { _, err := g.Int32s("u8"); return err }, `"u8" is u8, want array of i32`},
	} {
		if err := c.call(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want it to say %s", err, c.want)
		}
	}
}

// TestCodecs checks every decoder against the block formula evaluated in
// float64, and the Q8_0/Q4_0 encoders against ggml's reference rounding
// written out independently.
func TestCodecs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	vals := randomValues(rng, 7*32)
	vals[5] = 0
	for j := 64; j < 96; j++ {
		vals[j] = 0 // an all-zero block: d = 0
	}
	for _, typ := range []TensorType{Q8_0, Q4_0} {
		raw, err := Encode(typ, vals)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(typ, raw, int64(len(vals)))
		if err != nil {
			t.Fatal(err)
		}
		for b := 0; b < len(vals)/32; b++ {
			blk := vals[b*32 : (b+1)*32]
			var amax, signed float64
			for _, v := range blk {
				if math.Abs(float64(v)) > amax {
					amax, signed = math.Abs(float64(v)), float64(v)
				}
			}
			for j, v := range blk {
				var want float64
				if typ == Q8_0 {
					d := float64(f16round(float32(amax / 127)))
					if amax != 0 {
						want = d * math.Round(float64(v)/(amax/127))
					}
				} else {
					d := float64(f16round(float32(signed / -8)))
					if amax != 0 {
						q := math.Min(15, math.Trunc(float64(v)/(signed/-8)+8.5))
						want = d * (q - 8)
					}
				}
				g := float64(got[b*32+j])
				if math.Abs(g-want) > 1e-6*math.Max(1, math.Abs(want)) {
					t.Fatalf("%s block %d element %d: %g, want %g", typ, b, j, g, want)
				}
				// The quantization error is at most half a step.
				step := amax / 127
				if typ == Q4_0 {
					step = amax / 8
				}
				if math.Abs(g-float64(v)) > step*0.5+1e-3*step+1e-3*amax {
					t.Fatalf("%s block %d element %d: %g for %g (step %g)", typ, b, j, g, v, step)
				}
			}
		}
	}
	// Q4_0 nibble order and Q4_1 decoding, from hand-made blocks.
	blk := make([]byte, 18)
	copy(blk, []byte{0x00, 0x3c}) // d = 1.0 in f16
	blk[2] = 0x2f                 // element 0 = 15-8, element 16 = 2-8
	got, _ := Decode(Q4_0, blk, 32)
	if got[0] != 7 || got[16] != -6 || got[1] != -8 {
		t.Fatalf("Q4_0 nibbles: %v", got)
	}
	blk1 := make([]byte, 20)
	copy(blk1, []byte{0x00, 0x40, 0x00, 0xbc}) // d = 2, m = -1
	blk1[4+3] = 0x51
	got, _ = Decode(Q4_1, blk1, 32)
	if got[3] != 1 || got[19] != 9 || got[0] != -1 {
		t.Fatalf("Q4_1: %v", got)
	}
	// f16/bf16 round trips of representable values are exact.
	for _, typ := range []TensorType{F16, BF16, F32} {
		in := []float32{0, -2, 0.5, 1024}
		raw, _ := Encode(typ, in)
		out, err := Decode(typ, raw, 4)
		if err != nil || !reflect.DeepEqual(in, out) {
			t.Fatalf("%s: %v %v", typ, out, err)
		}
	}
	if _, err := Decode(Q4_K, make([]byte, 144), 256); err == nil || !strings.Contains(err.Error(), "Q4_K") {
		t.Fatalf("Q4_K: %v", err)
	}
	if _, err := Encode(Q8_0, make([]float32, 33)); err == nil {
		t.Fatal("33 values encoded as Q8_0")
	}
}

func f16round(f float32) float32 {
	raw, _ := Encode(F16, []float32{f})
	v, _ := Decode(F16, raw, 1)
	return v[0]
}

func TestBadFiles(t *testing.T) {
	data, _ := Encode(F32, make([]float32, 8))
	tensors := []Tensor{{Name: "w", Dims: []int64{8}, Type: F32, Data: func() ([]byte, error) { return data, nil }}}
	_, image := writeFile(t, []KV{{"k", uint32(1)}}, tensors)
	dir := t.TempDir()
	try := func(img []byte) error {
		p := filepath.Join(dir, "bad.gguf")
		os.WriteFile(p, img, 0o644)
		g, err := Open(p)
		if err == nil {
			g.Close()
		}
		return err
	}
	for n := 0; n < len(image); n++ {
		if err := try(image[:n]); err == nil {
			t.Fatalf("truncated to %d of %d bytes: accepted", n, len(image))
		}
	}
	// The tensor type field of "w" made unknown: named.
	idx := bytes.Index(image, []byte("w\x01\x00\x00\x00")) + 1 + 4 + 8
	bad := bytes.Clone(image)
	bad[idx] = 99
	if err := try(bad); err == nil || !strings.Contains(err.Error(), `tensor "w": unknown tensor type 99`) {
		t.Fatalf("unknown type: %v", err)
	}
	// A value type tag made unknown: the key is named.
	bad = bytes.Clone(image)
	bad[bytes.Index(bad, []byte("k"))+1] = 77
	if err := try(bad); err == nil || !strings.Contains(err.Error(), `key "k"`) {
		t.Fatalf("unknown value type: %v", err)
	}
	if err := try([]byte("GGUF\x02\x00\x00\x00")); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("version: %v", err)
	}
}
