package gguf

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary files to Open, then reads every metadata value
// through the typed accessors and decodes every tensor it accepts. Nothing
// may panic, and no tensor may claim bytes beyond the file. Seeds: a valid
// file with every metadata type and each decodable tensor type, plus the
// seeds in testdata/fuzz/FuzzOpen.
func FuzzOpen(f *testing.F) {
	vals := make([]float32, 64)
	for i := range vals {
		vals[i] = float32(i%7) - 3
	}
	var tensors []Tensor
	for _, typ := range []TensorType{F32, F16, BF16, Q8_0, Q4_0} {
		data, _ := Encode(typ, vals)
		tensors = append(tensors, Tensor{Name: typ.String(), Dims: []int64{32, 2}, Type: typ, Data: func() ([]byte, error) { return data, nil }})
	}
	var buf bytes.Buffer
	if err := Write(&buf, sampleMeta(32), tensors); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:200])
	f.Add([]byte("GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x00\x00\x00\x00\x00\x00\x00"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, image []byte) {
		path := filepath.Join(dir, "fuzz.gguf")
		if err := os.WriteFile(path, image, 0o644); err != nil {
			t.Fatal(err)
		}
		g, err := Open(path)
		if err != nil {
			return
		}
		defer g.Close()
		for _, kv := range g.Metadata {
			g.Uint32(kv.Key)
			g.Strings(kv.Key)
			g.Float32s(kv.Key)
		}
		var total int64
		for _, info := range g.Tensors {
			total += info.NumBytes()
			raw, err := g.ReadRaw(info.Name)
			if err != nil || int64(len(raw)) != info.NumBytes() {
				t.Fatalf("tensor %q: read %d bytes of %d: %v", info.Name, len(raw), info.NumBytes(), err)
			}
			if info.Type.Decodable() {
				v, err := g.ReadFloat32(info.Name)
				if err != nil || int64(len(v)) != info.NumElements() {
					t.Fatalf("tensor %q: %d values of %d: %v", info.Name, len(v), info.NumElements(), err)
				}
			}
		}
		if total > int64(len(image)) {
			t.Fatalf("accepted tensors of %d bytes in a %d-byte file", total, len(image))
		}
	})
}
