package gpu

import "testing"

func TestZZAlias(t *testing.T) {
	for _, shared := range []string{"true", "false"} {
		src := `const SHARED = ` + shared + `;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
fn load_x(i: u32) -> f32 { if (SHARED) { return y[i]; } else { return x[i]; } }
@compute @workgroup_size(1) fn main() { y[0] = load_x(1); }`
		k, err := testDevice.CompileKernel("alias"+shared, src)
		if err != nil {
			t.Fatal(err)
		}
		b := upload(t, F32, []float32{1, 2, 3, 4}, 4)
		rec := testDevice.NewRecorder()
		err = rec.Dispatch(k, nil, []Binding{Bind(b.Buf)}, 1, 1, 1)
		t.Log(shared, "dispatch:", err)
		err = rec.Submit()
		t.Log(shared, "submit:", err)
		v, err := b.Download(ctx)
		t.Log(shared, v, err, testDevice.Err())
		rec.Release()
	}
}
