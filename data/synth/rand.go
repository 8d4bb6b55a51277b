package synth

// rng is SplitMix64 (Steele, Lea, Flood 2014). The generators use their own small generator
// rather than math/rand so that a seed names the same data set under every Go release: the
// built-in task and corpus must be reproducible on a fresh machine from `--seed` alone.
type rng struct{ state uint64 }

func newRNG(seed uint64) *rng { return &rng{state: seed} }

func (r *rng) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// intn is uniform in [0, n) (n > 0), without modulo bias.
func (r *rng) intn(n int) int {
	if n <= 1 {
		return 0
	}
	bound := uint64(n)
	limit := -bound % bound // 2^64 mod n: values below it would over-represent small results
	for {
		if v := r.next(); v >= limit {
			return int(v % bound)
		}
	}
}

// between is uniform in [lo, hi].
func (r *rng) between(lo, hi int) int { return lo + r.intn(hi-lo+1) }

// chance is true with probability num/den.
func (r *rng) chance(num, den int) bool { return r.intn(den) < num }

func pick[T any](r *rng, xs []T) T { return xs[r.intn(len(xs))] }

// sample returns k distinct elements of xs in random order (k <= len(xs)).
func sample[T any](r *rng, xs []T, k int) []T {
	idx := make([]int, len(xs))
	for i := range idx {
		idx[i] = i
	}
	out := make([]T, k)
	for i := 0; i < k; i++ {
		j := i + r.intn(len(idx)-i)
		idx[i], idx[j] = idx[j], idx[i]
		out[i] = xs[idx[i]]
	}
	return out
}
