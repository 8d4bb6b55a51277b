package gpu_test

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

// TestFusedMultiplyAdd32 checks the host's dequantization arithmetic against
// s*q + b computed exactly and rounded once to float32: random operands of
// many magnitudes, and products that fall exactly halfway between two
// float32 values with a bias too small for float64 to keep, where rounding
// through float64 first would round the wrong way.
func TestFusedMultiplyAdd32(t *testing.T) {
	exact := func(s, q, b float32) float32 {
		x := new(big.Float).SetPrec(256).SetFloat64(float64(s))
		x.Mul(x, new(big.Float).SetPrec(256).SetFloat64(float64(q)))
		x.Add(x, new(big.Float).SetPrec(256).SetFloat64(float64(b)))
		f, _ := x.Float32()
		return f
	}
	type operands struct{ s, q, b float32 }
	var cases []operands
	// 1 + 2^-23 times an odd code has 25 significant bits: a float32 midpoint.
	one := math.Nextafter32(1, 2)
	for _, q := range []float32{3, 5, 7, 11, 13, 15, 255} {
		for _, b := range []float32{0x1p-60, -0x1p-60, 0x1p-100, 0} {
			cases = append(cases, operands{one, q, b}, operands{-one, q, b}, operands{one * 0x1p-20, q, b * 0x1p-20})
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 100000 {
		s := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(40)-20)))
		b := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(80)-40)))
		cases = append(cases, operands{s, float32(rng.IntN(256)), b})
	}
	for _, c := range cases {
		got, want := gpu.FusedMultiplyAdd32(c.s, c.q, c.b), exact(c.s, c.q, c.b)
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("%g * %g + %g = %g (bits %#x), want %g (bits %#x)", c.s, c.q, c.b, got, math.Float32bits(got), want, math.Float32bits(want))
		}
	}
	// The ties above do round differently through float64 alone.
	if s, q, b := one, float32(3), float32(-0x1p-60); float32(float64(s)*float64(q)+float64(b)) == exact(s, q, b) {
		t.Errorf("%g * %g + %g: rounding through float64 agrees with the exact result; the case does not test the halfway correction", s, q, b)
	}
}
