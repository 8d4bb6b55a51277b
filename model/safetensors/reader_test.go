package safetensors

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestOpenFixtures(t *testing.T) {
	cases := []struct {
		name, variant string
		dtype         Dtype
		tensors       int
		checks        map[string][]int
	}{
		{"llama-gqa", "model", F32, 30, map[string][]int{
			"model.embed_tokens.weight":              {512, 64},
			"lm_head.weight":                         {512, 64},
			"model.layers.0.self_attn.k_proj.weight": {32, 64},
			"model.layers.2.mlp.down_proj.weight":    {64, 176},
			"model.norm.weight":                      {64},
		}},
		{"llama-gqa", "model-bf16", BF16, 30, map[string][]int{
			"model.layers.1.mlp.gate_proj.weight": {176, 64},
		}},
		{"qwen2-bias", "model", F32, 26, map[string][]int{
			"model.layers.0.self_attn.q_proj.bias":   {64},
			"model.layers.1.self_attn.v_proj.weight": {64, 64},
		}},
		{"qwen2-bias", "model-bf16", BF16, 26, map[string][]int{
			"model.layers.1.self_attn.k_proj.bias": {64},
		}},
	}
	for _, c := range cases {
		t.Run(c.name+"/"+c.variant, func(t *testing.T) {
			f, err := Open(fixtureModel(t, c.name, c.variant))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			names := f.Names()
			if len(names) != c.tensors || !slices.IsSorted(names) {
				t.Errorf("Names() = %d names (sorted %v), want %d sorted", len(names), slices.IsSorted(names), c.tensors)
			}
			if got := f.Metadata()["format"]; got != "pt" {
				t.Errorf("metadata format = %q, want pt", got)
			}
			for name, shape := range c.checks {
				info, err := f.Info(name)
				if err != nil {
					t.Fatal(err)
				}
				if info.Dtype != c.dtype || !slices.Equal(info.Shape, shape) || info.Path != f.Path() {
					t.Errorf("%s: %+v, want dtype %s shape %v", name, info, c.dtype, shape)
				}
				values, err := f.ReadFloat32(name)
				if err != nil {
					t.Fatal(err)
				}
				if int64(len(values)) != info.NumElements() {
					t.Errorf("%s: %d values, want %d", name, len(values), info.NumElements())
				}
				raw, err := f.ReadRaw(name)
				if err != nil {
					t.Fatal(err)
				}
				if int64(len(raw)) != info.NumBytes() {
					t.Errorf("%s: %d raw bytes, want %d", name, len(raw), info.NumBytes())
				}
			}
			if _, err := f.Info("no.such.tensor"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), f.Path()) {
				t.Errorf("Info(missing) error = %v, want ErrNotFound naming the file", err)
			}
		})
	}
}

// TestBF16MatchesF32 checks the bf16 fixture is the f32 fixture rounded to
// nearest even, which exercises both the BF16 decoder and the encoder.
func TestBF16MatchesF32(t *testing.T) {
	for _, name := range []string{"llama-gqa", "qwen2-bias"} {
		f32, err := Open(fixtureModel(t, name, "model"))
		if err != nil {
			t.Fatal(err)
		}
		defer f32.Close()
		bf16, err := Open(fixtureModel(t, name, "model-bf16"))
		if err != nil {
			t.Fatal(err)
		}
		defer bf16.Close()
		if !slices.Equal(f32.Names(), bf16.Names()) {
			t.Fatalf("%s: f32 and bf16 checkpoints hold different tensors", name)
		}
		for _, tensor := range f32.Names() {
			want, err := f32.ReadFloat32(tensor)
			if err != nil {
				t.Fatal(err)
			}
			got, err := bf16.ReadFloat32(tensor)
			if err != nil {
				t.Fatal(err)
			}
			for i := range want {
				if got[i] != BFloat16ToFloat32(Float32ToBFloat16(want[i])) {
					t.Fatalf("%s %s[%d]: bf16 %v, f32 %v rounds to %v", name, tensor, i, got[i], want[i], BFloat16ToFloat32(Float32ToBFloat16(want[i])))
				}
			}
		}
	}
}

// writeRaw writes a safetensors file from a header (padded to 8 bytes as the
// reference does) and data, with no validation, for corrupt-input tests.
func writeRaw(t *testing.T, header string, data []byte) string {
	t.Helper()
	for len(header)%8 != 0 {
		header += " "
	}
	buf := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	buf = append(append(buf, header...), data...)
	path := filepath.Join(t.TempDir(), "corrupt.safetensors")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantOpenError opens path and checks the error mentions the file and every
// one of the given fragments.
func wantOpenError(t *testing.T, path string, fragments ...string) {
	t.Helper()
	f, err := Open(path)
	if err == nil {
		f.Close()
		t.Fatalf("Open(%s) succeeded, want an error mentioning %q", path, fragments)
	}
	msg := err.Error()
	for _, want := range append([]string{path}, fragments...) {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

func TestOpenCorrupt(t *testing.T) {
	sixteen := make([]byte, 16)
	cases := []struct {
		name      string
		header    string
		data      []byte
		fragments []string
	}{
		{"bad JSON", `{"w": {"dtype": "F32",`, sixteen, []string{"not valid JSON"}},
		{"not an object", `[1, 2]`, nil, []string{"not a JSON object"}},
		{"trailing junk", `{} x`, nil, []string{"trailing data"}},
		{"unknown dtype", `{"w": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}}`, sixteen,
			[]string{`"w"`, `unknown dtype "F33"`}},
		{"missing dtype", `{"w": {"shape": [4], "data_offsets": [0, 16]}}`, sixteen, []string{`"w"`, "no dtype"}},
		{"missing shape", `{"w": {"dtype": "F32", "data_offsets": [0, 16]}}`, sixteen, []string{`"w"`, "no shape"}},
		{"missing offsets", `{"w": {"dtype": "F32", "shape": [4]}}`, sixteen, []string{`"w"`, "no data_offsets"}},
		{"three offsets", `{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}}`, sixteen,
			[]string{`"w"`, "3 entries"}},
		{"negative dim", `{"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}`, sixteen,
			[]string{`"w"`, "invalid dimension"}},
		{"fractional dim", `{"w": {"dtype": "F32", "shape": [4.5], "data_offsets": [0, 16]}}`, sixteen,
			[]string{`"w"`, "malformed"}},
		{"end before begin", `{"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 8]}}`, sixteen,
			[]string{`"w"`, "end before begin"}},
		{"offsets out of range", `{"w": {"dtype": "F32", "shape": [250], "data_offsets": [0, 1000]}}`, sixteen,
			[]string{`"w"`, "run past the end of the 16-byte data region"}},
		{"size mismatch", `{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}`, sixteen,
			[]string{`"w"`, "hold 16 bytes", "needs 24"}},
		{"overflowing shape", `{"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}`, sixteen,
			[]string{`"w"`, "too large"}},
		{"overlap", `{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}`,
			make([]byte, 24), []string{`"b"`, `overlap tensor "a"`}},
		{"gap", `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}`,
			sixteen, []string{`tensor "a" ends at 8, tensor "b"`, "bytes [8, 12) of the data region belong to no tensor"}},
		// a moved onto c: the overlap names a (and c), not b, whose start the move
		// left after a gap.
		{"moved tensor", `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "c": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}`,
			make([]byte, 24), []string{`"a"`, `"c"`, "overlap"}},
		{"gap at the start", `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}`,
			sixteen, []string{`tensor "a"`, "bytes [0, 8)"}},
		{"trailing bytes", `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}`, sixteen,
			[]string{"8 bytes after the last tensor"}},
		{"duplicate name", `{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}`,
			sixteen, []string{`"a"`, "twice"}},
		{"bad metadata", `{"__metadata__": {"n": 1}}`, nil, []string{"__metadata__"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantOpenError(t, writeRaw(t, c.header, c.data), c.fragments...)
		})
	}
}

func TestOpenHeaderLengthBeyondFile(t *testing.T) {
	buf := binary.LittleEndian.AppendUint64(nil, 1<<20)
	buf = append(buf, "{}      "...)
	path := filepath.Join(t.TempDir(), "long.safetensors")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	wantOpenError(t, path, "header length 1048576 exceeds")

	short := filepath.Join(t.TempDir(), "short.safetensors")
	if err := os.WriteFile(short, []byte{1, 2, 3}, 0o644); err != nil {
		t.Fatal(err)
	}
	wantOpenError(t, short, "too short")
}

// copyFixture copies a fixture file into a temporary folder.
func copyFixture(t *testing.T, src string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestOpenTruncatedFixture(t *testing.T) {
	path := copyFixture(t, fixtureModel(t, "llama-gqa", "model"))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Cutting into the data region: the last tensor by offset runs past the end.
	if err := os.Truncate(path, st.Size()-100); err != nil {
		t.Fatal(err)
	}
	wantOpenError(t, path, `"model.norm.weight"`, "run past the end", "truncated")

	// Cutting into the header: the length field promises more than remains.
	if err := os.Truncate(path, 1000); err != nil {
		t.Fatal(err)
	}
	wantOpenError(t, path, "header length 3072 exceeds")
}

// TestReadAfterTruncation covers a file that shrinks while open: the read
// fails with an error naming the file and tensor instead of returning zeros.
func TestReadAfterTruncation(t *testing.T) {
	path := copyFixture(t, fixtureModel(t, "llama-gqa", "model"))
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(path, 8+3072+1000); err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadFloat32("model.norm.weight")
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `"model.norm.weight"`) {
		t.Errorf("read after truncation: error %v, want one naming the file and tensor", err)
	}
}

func TestOpenMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.safetensors")
	_, err := Open(path)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("Open(missing) = %v, want a not-exist error naming %s", err, path)
	}
}

func TestReadFloat32RejectsIntegers(t *testing.T) {
	path := writeRaw(t, `{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}`, make([]byte, 16))
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadFloat32("ids"); err == nil || !strings.Contains(err.Error(), `"ids"`) || !strings.Contains(err.Error(), "I64") {
		t.Errorf("ReadFloat32(I64) error = %v, want one naming the tensor and dtype", err)
	}
	raw, err := f.ReadRaw("ids")
	if err != nil || len(raw) != 16 {
		t.Errorf("ReadRaw(I64) = %d bytes, %v", len(raw), err)
	}
}

// TestReadFloat32LargeTensor reads a tensor bigger than the conversion chunk,
// so the chunked path and its boundaries are exercised.
func TestReadFloat32LargeTensor(t *testing.T) {
	n := readChunk/2 + 3 // BF16: one full chunk plus a partial one
	values := make([]float32, n)
	for i := range values {
		values[i] = float32(i%256) - 128 // exact in bf16 (8 significant bits)
	}
	tensor, err := NewFloatTensor(BF16, []int{n}, values)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "big.safetensors")
	if err := WriteFile(path, map[string]Tensor{"big": tensor}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := f.ReadFloat32("big")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, values) {
		t.Error("large BF16 tensor did not round-trip")
	}
}

var _ io.Closer = (*File)(nil)
