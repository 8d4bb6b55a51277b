package safetensors

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestWriteRoundTrip(t *testing.T) {
	values := []float32{0, -0.5, 1, 3.140625, -65504, 1e-3, 6e-8, float32(math.Inf(1))}
	tensors := map[string]Tensor{}
	for _, dtype := range []Dtype{F32, BF16, F16} {
		tensor, err := NewFloatTensor(dtype, []int{2, 4}, values)
		if err != nil {
			t.Fatal(err)
		}
		tensors["w."+string(dtype)] = tensor
	}
	tensors["scalar"] = Tensor{Dtype: F32, Shape: []int{}, Data: binary.LittleEndian.AppendUint32(nil, math.Float32bits(7))}
	tensors["empty"] = Tensor{Dtype: F16, Shape: []int{0, 3}, Data: nil}
	metadata := map[string]string{"format": "pt", "note": `quotes " and <tags>`}

	path := filepath.Join(t.TempDir(), "out.safetensors")
	if err := WriteFile(path, tensors, metadata); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if want := []string{"empty", "scalar", "w.BF16", "w.F16", "w.F32"}; !slices.Equal(f.Names(), want) {
		t.Errorf("Names() = %v, want %v", f.Names(), want)
	}
	if got := f.Metadata(); got["format"] != "pt" || got["note"] != metadata["note"] {
		t.Errorf("Metadata() = %v, want %v", got, metadata)
	}
	for _, dtype := range []Dtype{F32, BF16, F16} {
		name := "w." + string(dtype)
		info, err := f.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Dtype != dtype || !slices.Equal(info.Shape, []int{2, 4}) {
			t.Errorf("%s: dtype %s shape %v", name, info.Dtype, info.Shape)
		}
		got, err := f.ReadFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range values {
			want := v
			switch dtype {
			case BF16:
				want = BFloat16ToFloat32(Float32ToBFloat16(v))
			case F16:
				want = HalfToFloat32(Float32ToHalf(v))
			}
			if got[i] != want {
				t.Errorf("%s[%d] = %v, want %v", name, i, got[i], want)
			}
		}
		raw, err := f.ReadRaw(name)
		if err != nil || !bytes.Equal(raw, tensors[name].Data) {
			t.Errorf("%s: raw bytes differ from those written (%v)", name, err)
		}
	}
	if got, err := f.ReadFloat32("scalar"); err != nil || !slices.Equal(got, []float32{7}) {
		t.Errorf("scalar = %v, %v", got, err)
	}
	if got, err := f.ReadFloat32("empty"); err != nil || len(got) != 0 {
		t.Errorf("empty = %v, %v", got, err)
	}
	// Values that bf16/f16 represent exactly come back unchanged.
	if got, _ := f.ReadFloat32("w.F16"); got[3] != 3.140625 || got[4] != -65504 {
		t.Errorf("exact f16 values changed: %v", got)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	headerLen := binary.LittleEndian.Uint64(raw)
	if (8+headerLen)%8 != 0 {
		t.Errorf("data region starts at %d, not 8-byte aligned", 8+headerLen)
	}
	header := string(raw[8 : 8+headerLen])
	if trimmed := strings.TrimRight(header, " "); !strings.HasPrefix(trimmed, `{"__metadata__":`) || !strings.HasSuffix(trimmed, "}") {
		t.Errorf("header not in the reference layout: %q", header)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("file mode %v, want 0644", st.Mode().Perm())
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

// TestWriteMatchesReference rewrites each fixture from its own tensors and
// checks the bytes are identical to what the Python safetensors library wrote.
func TestWriteMatchesReference(t *testing.T) {
	for _, fixture := range [][2]string{{"llama-gqa", "model"}, {"llama-gqa", "model-bf16"}, {"qwen2-bias", "model"}} {
		src := fixtureModel(t, fixture[0], fixture[1])
		f, err := Open(src)
		if err != nil {
			t.Fatal(err)
		}
		tensors := map[string]Tensor{}
		for _, name := range f.Names() {
			info, _ := f.Info(name)
			data, err := f.ReadRaw(name)
			if err != nil {
				t.Fatal(err)
			}
			tensors[name] = Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
		}
		metadata := f.Metadata()
		f.Close()

		dst := filepath.Join(t.TempDir(), SingleFileName)
		if err := WriteFile(dst, tensors, metadata); err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(src)
		got, _ := os.ReadFile(dst)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: rewritten file differs from the reference (%d vs %d bytes)", src, len(got), len(want))
		}
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ckpt.safetensors")
	one, _ := NewFloatTensor(F32, []int{1}, []float32{1})
	two, _ := NewFloatTensor(F32, []int{1}, []float32{2})
	if err := WriteFile(path, map[string]Tensor{"x": one}, nil); err != nil {
		t.Fatal(err)
	}
	// A failing write must leave the previous file intact.
	bad := Tensor{Dtype: F32, Shape: []int{3}, Data: make([]byte, 4)}
	if err := WriteFile(path, map[string]Tensor{"x": bad}, nil); err == nil {
		t.Fatal("writing a tensor with too little data succeeded")
	}
	if err := WriteFile(path, map[string]Tensor{"x": two}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := f.ReadFloat32("x"); !slices.Equal(got, []float32{2}) {
		t.Errorf("after overwrite x = %v, want [2]", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only the checkpoint", len(entries))
	}
}

func TestWriteRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	cases := []struct {
		name    string
		tensors map[string]Tensor
		want    string
	}{
		{"size mismatch", map[string]Tensor{"w": {Dtype: F32, Shape: []int{2, 2}, Data: make([]byte, 12)}}, `tensor "w": 12 bytes`},
		{"unknown dtype", map[string]Tensor{"w": {Dtype: "F12", Shape: []int{1}, Data: make([]byte, 2)}}, `unknown dtype "F12"`},
		{"negative dim", map[string]Tensor{"w": {Dtype: F32, Shape: []int{-1}}}, `tensor "w": negative dimension`},
		{"reserved name", map[string]Tensor{"__metadata__": {Dtype: F32, Shape: []int{}, Data: make([]byte, 4)}}, "reserved"},
	}
	for _, c := range cases {
		err := WriteFile(path, c.tensors, nil)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s and containing %q", c.name, err, path, c.want)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a failed write left %s behind", path)
	}
	missingDir := filepath.Join(dir, "no", "such", "dir", "x.safetensors")
	if err := WriteFile(missingDir, nil, nil); err == nil || !strings.Contains(err.Error(), missingDir) {
		t.Errorf("write into a missing folder: %v", err)
	}
	if _, err := NewFloatTensor(F32, []int{2, 2}, []float32{1}); err == nil {
		t.Error("NewFloatTensor accepted 1 value for shape [2 2]")
	}
	if _, err := NewFloatTensor("I32", []int{1}, []float32{1}); err == nil {
		t.Error("NewFloatTensor accepted dtype I32")
	}
}
