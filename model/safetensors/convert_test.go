package safetensors

import (
	"math"
	"testing"
)

// halfValue decodes binary16 from its definition, independently of
// HalfToFloat32's bit manipulation.
func halfValue(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * mant / 1024 * math.Pow(2, -14)
	case 31:
		if mant == 0 {
			return sign * math.Inf(1)
		}
		return math.NaN()
	}
	return sign * (1 + mant/1024) * math.Pow(2, float64(exp-15))
}

func TestHalfToFloat32AllValues(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		got := HalfToFloat32(h)
		want := halfValue(h)
		if math.IsNaN(want) {
			if !math.IsNaN(float64(got)) {
				t.Fatalf("half %#04x: got %v, want NaN", h, got)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != (h&0x8000 != 0) {
			t.Fatalf("half %#04x: got %v, want %v", h, got, want)
		}
		// Every half is a float32, so converting back must be exact.
		if back := Float32ToHalf(got); back != h {
			t.Fatalf("half %#04x -> %v -> %#04x", h, got, back)
		}
	}
}

func TestHalfSpecialValues(t *testing.T) {
	cases := []struct {
		h    uint16
		want float64
	}{
		{0x0001, 5.960464477539063e-08}, // smallest subnormal, 2^-24
		{0x03ff, 6.097555160522461e-05}, // largest subnormal
		{0x0400, 6.103515625e-05},       // smallest normal, 2^-14
		{0x3c00, 1},
		{0x3555, 0.333251953125},
		{0x7bff, 65504}, // largest finite
		{0xc000, -2},
		{0x7c00, math.Inf(1)},
		{0xfc00, math.Inf(-1)},
	}
	for _, c := range cases {
		if got := HalfToFloat32(c.h); float64(got) != c.want {
			t.Errorf("HalfToFloat32(%#04x) = %v, want %v", c.h, got, c.want)
		}
	}
	if got := HalfToFloat32(0x8000); got != 0 || !math.Signbit(float64(got)) {
		t.Errorf("HalfToFloat32(0x8000) = %v, want -0", got)
	}
	for _, h := range []uint16{0x7e00, 0x7c01, 0xfe00} {
		if got := HalfToFloat32(h); !math.IsNaN(float64(got)) {
			t.Errorf("HalfToFloat32(%#04x) = %v, want NaN", h, got)
		}
	}
}

func TestFloat32ToHalfRounding(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3c00},
		{1 + 1.0/2048, 0x3c00},        // tie, round to even (down)
		{1 + 3.0/2048, 0x3c02},        // tie, round to even (up)
		{1 + 1.0/2048 + 1e-7, 0x3c01}, // just above the tie
		{65504, 0x7bff},
		{65519, 0x7bff}, // below the rounding boundary
		{65520, 0x7c00}, // rounds to infinity
		{1e10, 0x7c00},  // overflow
		{-1e10, 0xfc00}, // negative overflow
		{float32(math.Ldexp(1, -24)), 0x0001},
		{float32(math.Ldexp(1, -25)), 0x0000},      // tie with zero, to even
		{float32(math.Ldexp(1.0001, -25)), 0x0001}, // just above the tie
		{float32(math.Ldexp(3, -25)), 0x0002},      // 1.5 units, tie to even
		{float32(math.Ldexp(1023.5, -24)), 0x0400}, // carries into the smallest normal
		{float32(math.Ldexp(1, -30)), 0x0000},      // underflow
		{-float32(math.Ldexp(1, -30)), 0x8000},     // negative underflow keeps the sign
		{math.Float32frombits(1), 0x0000},          // float32 subnormal
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
	}
	for _, c := range cases {
		if got := Float32ToHalf(c.f); got != c.want {
			t.Errorf("Float32ToHalf(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if got := Float32ToHalf(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("Float32ToHalf(NaN) = %#04x, want a NaN", got)
	}
}

// TestFloat32ToHalfNearest checks rounding against a brute-force nearest
// search over a sweep of float32 values across the whole half range.
func TestFloat32ToHalfNearest(t *testing.T) {
	for bits := uint32(0x33000000); bits < 0x47800000; bits += 0x1237 {
		f := math.Float32frombits(bits)
		h := Float32ToHalf(f)
		if h == 0x7c00 {
			// IEEE rounds to infinity from 65520 (max + half an ulp) up.
			if f < 65520 {
				t.Fatalf("Float32ToHalf(%g) = inf, want finite", f)
			}
			continue
		}
		got := halfValue(h)
		err := math.Abs(got - float64(f))
		// The neighbours of h must not be strictly closer.
		for _, n := range []uint16{h - 1, h + 1} {
			if n&0x7c00 == 0x7c00 { // skip inf/NaN neighbours
				continue
			}
			if d := math.Abs(halfValue(n) - float64(f)); d < err {
				t.Fatalf("Float32ToHalf(%g) = %#04x (%g), but %#04x (%g) is closer", f, h, got, n, halfValue(n))
			}
		}
	}
}

func TestBFloat16(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, to even (down)
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, to even (up)
		{math.Float32frombits(0x3f808001), 0x3f81}, // above the tie
		{math.Float32frombits(0x7f7fffff), 0x7f80}, // max float32 rounds to inf
		{float32(math.Inf(-1)), 0xff80},
	}
	for _, c := range cases {
		if got := Float32ToBFloat16(c.f); got != c.want {
			t.Errorf("Float32ToBFloat16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if got := Float32ToBFloat16(math.Float32frombits(0x7f800001)); !math.IsNaN(float64(BFloat16ToFloat32(got))) {
		t.Errorf("Float32ToBFloat16(signalling NaN) = %#04x, want a NaN", got)
	}
	for i := range 1 << 16 {
		h := uint16(i)
		f := BFloat16ToFloat32(h)
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := Float32ToBFloat16(f); back != h {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
}
