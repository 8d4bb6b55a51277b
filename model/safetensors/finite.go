package safetensors

import (
	"context"
	"fmt"
	"math"
)

// NonFinite counts the NaN and infinite values of one tensor.
type NonFinite struct {
	Name     string
	NaN, Inf int
	// First is the index of the first non-finite element (row-major).
	First int
}

func (n NonFinite) String() string {
	return fmt.Sprintf("%s: %d NaN, %d Inf (first at element %d)", n.Name, n.NaN, n.Inf, n.First)
}

// ScanNonFinite reads every tensor of r that ReadFloat32 reads (F32, BF16,
// F16: the weights of every checkpoint this trainer loads; integer tensors
// cannot hold NaN) and lists those that hold a NaN or an infinity, in name
// order. It holds one tensor in memory at a time.
func ScanNonFinite(ctx context.Context, r Reader) (bad []NonFinite, scanned int, err error) {
	for _, name := range r.Names() {
		if err := ctx.Err(); err != nil {
			return bad, scanned, err
		}
		info, err := r.Info(name)
		if err != nil {
			return bad, scanned, err
		}
		if !info.Dtype.IsFloat() {
			continue
		}
		values, err := r.ReadFloat32(name)
		if err != nil {
			return bad, scanned, err
		}
		scanned++
		n := NonFinite{Name: name, First: -1}
		for i, v := range values {
			switch f := float64(v); {
			case math.IsNaN(f):
				n.NaN++
			case math.IsInf(f, 0):
				n.Inf++
			default:
				continue
			}
			if n.First < 0 {
				n.First = i
			}
		}
		if n.First >= 0 {
			bad = append(bad, n)
		}
	}
	return bad, scanned, nil
}
