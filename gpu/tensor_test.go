package gpu_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

// Releasing a view, whether a struct literal or one made by Rows or Sub, must
// leave its parent's buffer alive and usable; releasing the parent frees it.
func TestReleasingAViewKeepsItsParent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	data := gputest.RandFloats(rng, 12)
	base := testDevice.LiveObjects()
	parent := gputest.Upload(t, testDevice, gpu.F32, data, 3, 4)
	defer parent.Release()

	literal := &gpu.Tensor{Buf: parent.Buf, Offset: 16, Shape: []int{4}, DType: gpu.F32}
	if got := gputest.Download(t, literal); !slices.Equal(got, data[4:8]) {
		t.Fatalf("literal view reads %v, want %v", got, data[4:8])
	}
	literal.Release()
	if live := testDevice.LiveObjects(); live != base+1 {
		t.Fatalf("%d live objects after releasing a literal view, want %d (the parent)", live, base+1)
	}
	rows, err := parent.Rows(1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := gputest.Download(t, rows); !slices.Equal(got, data[4:]) || !slices.Equal(rows.Shape, []int{2, 4}) {
		t.Fatalf("rows 1..3 read %v with shape %v, want %v with shape [2 4]", got, rows.Shape, data[4:])
	}
	rows.Release()
	if live := testDevice.LiveObjects(); live != base+1 {
		t.Fatalf("%d live objects after releasing views, want %d (the parent)", live, base+1)
	}
	if got := gputest.Download(t, parent); !slices.Equal(got, data) {
		t.Fatalf("parent reads %v after its views were released, want %v", got, data)
	}
	data = gputest.RandFloats(rng, 12)
	if err := parent.Upload(data); err != nil {
		t.Fatal(err)
	}
	if got := gputest.Download(t, parent); !slices.Equal(got, data) {
		t.Fatalf("parent reads %v after an upload, want %v", got, data)
	}
	parent.Release()
	if live := testDevice.LiveObjects(); live != base {
		t.Fatalf("%d live objects after releasing the parent, want %d", live, base)
	}
}

func TestSubViews(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	data := gputest.RandFloats(rng, 10)
	bf := gputest.Upload(t, testDevice, gpu.BF16, data, 10)
	defer bf.Release()
	sub, err := bf.Sub(4, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range gputest.Download(t, sub) {
		if want := gpu.FromBF16(gpu.ToBF16(data[4+i])); v != want {
			t.Fatalf("bf16 view element %d: got %v want %v", i, v, want)
		}
	}
	for _, bad := range []struct {
		name   string
		offset int
		shape  []int
	}{
		{"odd bf16 start", 3, []int{2}},
		{"past the end", 8, []int{3}},
		{"negative offset", -2, []int{2}},
		{"negative dimension", 0, []int{-1}},
	} {
		if _, err := bf.Sub(bad.offset, bad.shape...); err == nil {
			t.Errorf("%s: Sub(%d, %v) succeeded", bad.name, bad.offset, bad.shape)
		}
	}
	if _, err := bf.Rows(9, 2); err == nil {
		t.Error("Rows past the last row succeeded")
	}
}
