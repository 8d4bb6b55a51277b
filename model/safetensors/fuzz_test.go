package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// safetensorsBytes builds a file image: the 8-byte header length, the header
// and the data region.
func safetensorsBytes(header string, data []byte) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	out = append(out, header...)
	return append(out, data...)
}

// FuzzOpen feeds arbitrary files to Open and reads every tensor it accepts.
// Nothing may panic, and nothing may allocate beyond what the file holds: a
// header claiming a terabyte-sized tensor or header must be rejected from
// the file size alone. The seed corpus is in testdata/fuzz/FuzzOpen.
func FuzzOpen(f *testing.F) {
	f.Add(safetensorsBytes(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(safetensorsBytes(`{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]},"c":{"dtype":"I64","shape":[],"data_offsets":[4,12]}}`, make([]byte, 12)))
	f.Add(safetensorsBytes(`{"big":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}`, nil))
	f.Add(binary.LittleEndian.AppendUint64(nil, 1e12))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, image []byte) {
		path := filepath.Join(dir, "fuzz.safetensors")
		if err := os.WriteFile(path, image, 0o644); err != nil {
			t.Fatal(err)
		}
		sf, err := Open(path)
		if err != nil {
			return
		}
		defer sf.Close()
		var total int64
		for _, name := range sf.Names() {
			info, err := sf.Info(name)
			if err != nil {
				t.Fatalf("listed tensor %q: %v", name, err)
			}
			if info.NumBytes() < 0 || info.Begin < 0 {
				t.Fatalf("tensor %q: range [%d, %d]", name, info.Begin, info.End)
			}
			total += info.NumBytes()
			raw, err := sf.ReadRaw(name)
			if err != nil || int64(len(raw)) != info.NumBytes() {
				t.Fatalf("tensor %q: read %d bytes of %d: %v", name, len(raw), info.NumBytes(), err)
			}
			if info.Dtype.IsFloat() {
				values, err := sf.ReadFloat32(name)
				if err != nil || int64(len(values)) != info.NumElements() {
					t.Fatalf("tensor %q: %d floats of %d: %v", name, len(values), info.NumElements(), err)
				}
			}
		}
		if total > int64(len(image)) {
			t.Fatalf("accepted tensors of %d bytes in a %d-byte file", total, len(image))
		}
	})
}

// FuzzOpenSharded feeds arbitrary index files, naming one valid shard, to
// OpenSharded: no panic, no file read outside the checkpoint directory, and
// every listed tensor readable.
func FuzzOpenSharded(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":8},"weight_map":{"a":"shard.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../shard.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"missing.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{}}`))
	dir := f.TempDir()
	shard := safetensorsBytes(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8))
	if err := os.WriteFile(filepath.Join(dir, "shard.safetensors"), shard, 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, index []byte) {
		path := filepath.Join(dir, IndexFileName)
		if err := os.WriteFile(path, index, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSharded(path)
		if err != nil {
			return
		}
		defer s.Close()
		for _, shard := range s.Shards() {
			if filepath.Dir(shard) != dir {
				t.Fatalf("opened shard %s outside %s", shard, dir)
			}
		}
		for _, name := range s.Names() {
			if _, err := s.ReadFloat32(name); err != nil {
				t.Fatalf("tensor %q: %v", name, err)
			}
		}
	})
}
