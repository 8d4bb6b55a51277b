package predictor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestTopSingularValues builds W = U diag(s) V^T with known s and random
// orthonormal U, V (Gram-Schmidt), and checks the values come back in order.
func TestTopSingularValues(t *testing.T) {
	const rows, cols = 9, 13
	want := []float64{5, 3, 2, 0.5, 0.25}
	rng := rand.New(rand.NewPCG(1, 2))
	orthonormal := func(n, k int) [][]float64 {
		var out [][]float64
		for len(out) < k {
			v := make([]float64, n)
			for i := range v {
				v[i] = rng.NormFloat64()
			}
			for _, u := range out {
				d := 0.0
				for i := range v {
					d += v[i] * u[i]
				}
				for i := range v {
					v[i] -= d * u[i]
				}
			}
			norm := 0.0
			for _, x := range v {
				norm += x * x
			}
			for i := range v {
				v[i] /= math.Sqrt(norm)
			}
			out = append(out, v)
		}
		return out
	}
	u, v := orthonormal(rows, len(want)), orthonormal(cols, len(want))
	w := make([]float32, rows*cols)
	for r := range rows {
		for c := range cols {
			x := 0.0
			for j, s := range want {
				x += u[j][r] * s * v[j][c]
			}
			w[r*cols+c] = float32(x)
		}
	}
	got, err := TopSingularValues(w, rows, cols, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > 1e-5 {
			t.Fatalf("singular values %v, want %v", got, want[:3])
		}
	}
	if _, err := TopSingularValues(w, rows, cols+1, 3); err == nil {
		t.Error("a shape that does not match the values was accepted")
	}
}
