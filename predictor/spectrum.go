package predictor

import (
	"fmt"

	"gonum.org/v1/gonum/mat"
)

// MaxSpectrumElements bounds the matrices TopSingularValues factors on the host:
// an exact SVD of a larger one (an 8B model's MLP weight) takes minutes.
const MaxSpectrumElements = 1 << 24

// TopSingularValues returns the k largest singular values of a row-major
// [rows, cols] weight (an exact SVD on the host): how much low-rank structure
// the SVD estimator can find in it. Random matrices have a flat spectrum;
// trained weights fall off.
func TopSingularValues(values []float32, rows, cols, k int) ([]float64, error) {
	switch {
	case rows <= 0 || cols <= 0 || len(values) != rows*cols:
		return nil, fmt.Errorf("predictor: %d values for a %d x %d matrix", len(values), rows, cols)
	case rows*cols > MaxSpectrumElements:
		return nil, fmt.Errorf("predictor: a %d x %d matrix is too large for a host SVD (over %d elements)", rows, cols, MaxSpectrumElements)
	}
	w := make([]float64, len(values))
	for i, v := range values {
		w[i] = float64(v)
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(rows, cols, w), mat.SVDNone) {
		return nil, fmt.Errorf("predictor: the SVD of a %d x %d matrix did not converge", rows, cols)
	}
	s := svd.Values(nil)
	return s[:min(k, len(s))], nil
}
