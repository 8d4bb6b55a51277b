package safetensors

import (
	"context"
	"math"
	"path/filepath"
	"testing"
)

func TestScanNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(-1))
	tensors := map[string]Tensor{}
	for name, values := range map[string][]float32{
		"a": {1, 2, 3},
		"b": {1, nan, inf, nan},
		"c": {inf, 0},
	} {
		dtype := F32
		if name == "c" {
			dtype = BF16
		}
		tensor, err := NewFloatTensor(dtype, []int{len(values)}, values)
		if err != nil {
			t.Fatal(err)
		}
		tensors[name] = tensor
	}
	tensors["ids"] = Tensor{Dtype: Dtype("I64"), Shape: []int{1}, Data: make([]byte, 8)}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := WriteFile(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bad, scanned, err := ScanNonFinite(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	if scanned != 3 || len(bad) != 2 || bad[0].String() != "b: 2 NaN, 1 Inf (first at element 1)" || bad[1].String() != "c: 0 NaN, 1 Inf (first at element 0)" {
		t.Errorf("scanned %d, found %v", scanned, bad)
	}
}
