package gpu_test

import (
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/gputest"
)

func TestDispatchesCarryTheirKind(t *testing.T) {
	buf, err := testDevice.NewBuffer(1024, "kinds")
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Release()
	k, err := testDevice.CompileKernel("lifetime", lifetimeKernel)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Release()
	rec := testDevice.NewRecorder()
	defer rec.Release()
	var kinds []gpu.Kind
	rec.Log = func(d gpu.Dispatch) { kinds = append(kinds, d.Kind) }
	bindings := []gpu.Binding{gpu.Bind(buf)}
	if err := rec.Dispatch(0, k, nil, bindings, 1, 1, 1); err == nil {
		t.Error("a dispatch without a kind was recorded")
	}
	if err := rec.Dispatch(gpu.KindGemmDense, k, nil, bindings, 1, 1, 1); err == nil {
		t.Error("a GEMM kind was recorded outside gpu.Gemm")
	}
	if err := rec.Dispatch(gpu.KindNorm, k, nil, bindings, 1, 1, 1); err != nil {
		t.Fatal(err)
	}

	// Gemm picks the GEMM kind from its operands.
	a := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 100*3), 100, 3)
	defer a.Release()
	b := gputest.Upload(t, testDevice, gpu.F32, make([]float32, 3*70), 3, 70)
	defer b.Release()
	c := gputest.Poisoned(t, testDevice, 100, 70)
	defer c.Release()
	if err := gpu.Gemm(rec, gpu.GemmArgs{A: a, B: b, C: c, M: 100, N: 70, K: 3}); err != nil {
		t.Fatal(err)
	}
	gputest.Submit(t, rec)
	if len(kinds) != 2 || kinds[0] != gpu.KindNorm || kinds[1] != gpu.KindGemmThin {
		t.Fatalf("logged kinds %v, want [%v %v]", kinds, gpu.KindNorm, gpu.KindGemmThin)
	}
}
