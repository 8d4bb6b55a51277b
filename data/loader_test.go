package data

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// syntheticDataset has n examples; example i has i%5+2 tokens, all equal to
// 1000+i (so a batch row names its example), the first token unscored.
func syntheticDataset(n int) *Dataset {
	ds := &Dataset{Path: "synthetic"}
	for i := range n {
		l := i%5 + 2
		ex := Example{Line: i + 1}
		for t := range l {
			ex.IDs = append(ex.IDs, int32(1000+i))
			if t == 0 {
				ex.Labels = append(ex.Labels, IgnoreIndex)
			} else {
				ex.Labels = append(ex.Labels, int32(1000+i))
			}
		}
		ds.Examples = append(ds.Examples, ex)
		ds.MaxLen = max(ds.MaxLen, l)
	}
	return ds
}

// rowsOf lists the example index in each row of a step's micro-batches (-1:
// an all-padding row).
func rowsOf(micro []Batch) []int {
	var out []int
	for _, b := range micro {
		for r := range b.Rows {
			id := b.InputIDs[r*b.Seq]
			if b.Mask[r*b.Seq] == 0 {
				out = append(out, -1)
			} else {
				out = append(out, int(id)-1000)
			}
		}
	}
	return out
}

func TestStepsPerEpochMatchesBruteCount(t *testing.T) {
	for n := 1; n <= 23; n++ {
		ds := syntheticDataset(n)
		for batch := 1; batch <= 7; batch++ {
			for accum := 1; accum <= 5; accum++ {
				l, err := NewLoader(ds, LoaderOptions{BatchSize: batch, GradAccum: accum, Shuffle: true, Seed: 3})
				if err != nil {
					t.Fatal(err)
				}
				// Count steps and micro-batches until the epoch wraps; every
				// example must be seen exactly once.
				steps, micros := 0, 0
				seen := make([]int, n)
				for {
					micro, epoch, err := l.Next()
					if err != nil {
						t.Fatal(err)
					}
					steps++
					micros += len(micro)
					if len(micro) == 0 || len(micro) > accum {
						t.Fatalf("n=%d batch=%d accum=%d: step with %d micro-batches", n, batch, accum, len(micro))
					}
					for _, i := range rowsOf(micro) {
						if i >= 0 {
							seen[i]++
						}
					}
					if epoch >= 1 {
						if epoch != 1 {
							t.Fatalf("epoch %v at the end of the first epoch, want exactly 1", epoch)
						}
						break
					}
				}
				wantMicros := 0
				for left := n; left > 0; left -= batch {
					wantMicros++
				}
				wantSteps := 0
				for left := wantMicros; left > 0; left -= accum {
					wantSteps++
				}
				if steps != wantSteps || l.StepsPerEpoch() != wantSteps || micros != wantMicros || l.MicroBatchesPerEpoch() != wantMicros {
					t.Fatalf("n=%d batch=%d accum=%d: %d steps (StepsPerEpoch %d), %d micro-batches; want %d, %d",
						n, batch, accum, steps, l.StepsPerEpoch(), micros, wantSteps, wantMicros)
				}
				for i, c := range seen {
					if c != 1 {
						t.Fatalf("n=%d batch=%d accum=%d: example %d seen %d times", n, batch, accum, i, c)
					}
				}
				if c := l.Cursor(); c.Epoch != 1 || c.Step != 0 {
					t.Fatalf("cursor %+v after one epoch", c)
				}
			}
		}
	}
}

func TestFileOrderAndEpochFraction(t *testing.T) {
	// 10 examples, batch 2, accum 2: micro-batches {0,1} {2,3} | {4,5} {6,7} | {8,9}.
	l, err := NewLoader(syntheticDataset(10), LoaderOptions{BatchSize: 2, GradAccum: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		rows  []int
		epoch float64
	}{
		{[]int{0, 1, 2, 3}, 0.4}, {[]int{4, 5, 6, 7}, 0.8}, {[]int{8, 9}, 1},
		{[]int{0, 1, 2, 3}, 1.4}, {[]int{4, 5, 6, 7}, 1.8}, {[]int{8, 9}, 2},
	}
	for i, w := range want {
		micro, epoch, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		if got := rowsOf(micro); !slices.Equal(got, w.rows) || epoch != w.epoch {
			t.Errorf("step %d: rows %v epoch %v, want %v %v", i, got, epoch, w.rows, w.epoch)
		}
	}
	// 5 examples, batch 2: the last micro-batch has one example and a padding row.
	l, _ = NewLoader(syntheticDataset(5), LoaderOptions{BatchSize: 2, GradAccum: 4})
	micro, _, _ := l.Next()
	if got := rowsOf(micro); !slices.Equal(got, []int{0, 1, 2, 3, 4, -1}) {
		t.Errorf("rows %v, want 0..4 and one padding row", got)
	}
}

func TestShuffle(t *testing.T) {
	const n = 50
	ds := syntheticDataset(n)
	epochOrders := func(seed uint64, epochs int) [][]int {
		l, err := NewLoader(ds, LoaderOptions{BatchSize: 4, GradAccum: 3, Shuffle: true, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		var out [][]int
		for range epochs {
			var order []int
			for range l.StepsPerEpoch() {
				micro, _, _ := l.Next()
				for _, i := range rowsOf(micro) {
					if i >= 0 {
						order = append(order, i)
					}
				}
			}
			out = append(out, order)
		}
		return out
	}
	a, b, c := epochOrders(7, 3), epochOrders(7, 3), epochOrders(8, 3)
	identity := make([]int, n)
	for i := range identity {
		identity[i] = i
	}
	for e := range a {
		if !slices.Equal(a[e], b[e]) {
			t.Errorf("epoch %d: same seed, different order", e)
		}
		if slices.Equal(a[e], c[e]) {
			t.Errorf("epoch %d: seeds 7 and 8 give the same order", e)
		}
		if slices.Equal(a[e], identity) {
			t.Errorf("epoch %d: shuffled order is the file order", e)
		}
		if sorted := slices.Sorted(slices.Values(a[e])); !slices.Equal(sorted, identity) {
			t.Errorf("epoch %d: order is not a permutation: %v", e, a[e])
		}
		if e > 0 && slices.Equal(a[e], a[e-1]) {
			t.Errorf("epochs %d and %d have the same order", e-1, e)
		}
	}
}

// TestShuffleIsUniform checks that all 6 orders of 3 examples are about
// equally likely over many seeds (a biased bounded draw would skew them).
func TestShuffleIsUniform(t *testing.T) {
	counts := map[string]int{}
	const trials = 12000
	for seed := range uint64(trials) {
		order := []int{0, 1, 2}
		shuffle(order, seed, 0)
		counts[fmt.Sprint(order)]++
	}
	if len(counts) != 6 {
		t.Fatalf("%d distinct orders of 3, want 6: %v", len(counts), counts)
	}
	for k, c := range counts {
		if c < trials/6*85/100 || c > trials/6*115/100 {
			t.Errorf("order %s drawn %d times of %d, want about %d", k, c, trials, trials/6)
		}
	}
}

func TestResumeReproducesUninterruptedRun(t *testing.T) {
	ds := syntheticDataset(37)
	for _, shuffle := range []bool{false, true} {
		opts := LoaderOptions{BatchSize: 3, GradAccum: 2, Shuffle: shuffle, Seed: 42}
		ref, _ := NewLoader(ds, opts)
		var want [][]int
		var wantEpochs []float64
		const total = 25 // spans several epochs of 7 steps
		for range total {
			micro, epoch, _ := ref.Next()
			want = append(want, rowsOf(micro))
			wantEpochs = append(wantEpochs, epoch)
		}
		for stop := 0; stop <= total; stop++ {
			first, _ := NewLoader(ds, opts)
			for range stop {
				first.Next()
			}
			saved, err := json.Marshal(first.Cursor())
			if err != nil {
				t.Fatal(err)
			}
			var c Cursor
			if err := json.Unmarshal(saved, &c); err != nil {
				t.Fatal(err)
			}
			// The resumed loader starts with another seed: the cursor's wins.
			resumed, _ := NewLoader(ds, LoaderOptions{BatchSize: 3, GradAccum: 2, Shuffle: shuffle, Seed: 1})
			if err := resumed.Seek(c); err != nil {
				t.Fatal(err)
			}
			for s := stop; s < total; s++ {
				micro, epoch, _ := resumed.Next()
				if got := rowsOf(micro); !slices.Equal(got, want[s]) || epoch != wantEpochs[s] {
					t.Fatalf("shuffle=%v resumed after %d steps: step %d rows %v epoch %v, want %v %v",
						shuffle, stop, s, got, epoch, want[s], wantEpochs[s])
				}
			}
		}
	}
}

func TestSeekRejectsForeignCursor(t *testing.T) {
	l, _ := NewLoader(syntheticDataset(10), LoaderOptions{BatchSize: 2, GradAccum: 1})
	for _, c := range []Cursor{{Epoch: 0, Step: 5}, {Epoch: -1}, {Step: -1}, {Step: 1, Examples: 11}} {
		if err := l.Seek(c); err == nil {
			t.Errorf("Seek(%+v) accepted", c)
		}
	}
	if err := l.Seek(Cursor{Epoch: 3, Step: 4, Examples: 10}); err != nil {
		t.Errorf("Seek of a valid cursor: %v", err)
	}
}

func TestBatchPaddingAndTargets(t *testing.T) {
	ds := &Dataset{Path: "f.jsonl", Examples: []Example{
		{IDs: ids(11, 12, 13), Labels: ids(-100, 12, 13), Line: 1},
		{IDs: ids(21, 22), Labels: ids(-100, 22), Line: 2},
		{IDs: ids(31, 32, 33, 34), Labels: ids(-100, -100, -100, 34), Line: 3},
	}}
	l, err := NewLoader(ds, LoaderOptions{BatchSize: 2, GradAccum: 2, Seq: 5})
	if err != nil {
		t.Fatal(err)
	}
	if l.Seq() != 5 {
		t.Fatalf("seq %d, want 5", l.Seq())
	}
	micro, _, _ := l.Next()
	if len(micro) != 2 {
		t.Fatalf("%d micro-batches, want 2", len(micro))
	}
	want := []Batch{
		{Rows: 2, Seq: 5,
			InputIDs: ids(11, 12, 13, 0, 0, 21, 22, 0, 0, 0),
			Mask:     ids(1, 1, 1, 0, 0, 1, 1, 0, 0, 0),
			Labels:   ids(-100, 12, 13, -100, -100, -100, 22, -100, -100, -100)},
		{Rows: 2, Seq: 5,
			InputIDs: ids(31, 32, 33, 34, 0, 0, 0, 0, 0, 0),
			Mask:     ids(1, 1, 1, 1, 0, 0, 0, 0, 0, 0),
			Labels:   ids(-100, -100, -100, 34, -100, -100, -100, -100, -100, -100)},
	}
	for i := range want {
		g, w := micro[i], want[i]
		if g.Rows != w.Rows || g.Seq != w.Seq || !slices.Equal(g.InputIDs, w.InputIDs) || !slices.Equal(g.Mask, w.Mask) || !slices.Equal(g.Labels, w.Labels) {
			t.Errorf("micro-batch %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	if got := []int{TargetCount(micro[0]), TargetCount(micro[1])}; !slices.Equal(got, []int{3, 1}) {
		t.Errorf("target counts %v, want [3 1]", got)
	}
	// A label at a row's first position is never a target, and the next row's
	// first label does not count for the previous row's last position.
	b := Batch{Rows: 2, Seq: 2, InputIDs: ids(1, 2, 3, 4), Mask: ids(1, 1, 1, 1), Labels: ids(1, -100, 3, 4)}
	if got := TargetCount(b); got != 1 {
		t.Errorf("TargetCount %d, want 1", got)
	}

	if _, err := NewLoader(ds, LoaderOptions{BatchSize: 2, GradAccum: 1, Seq: 3}); err == nil || !strings.Contains(err.Error(), "f.jsonl:3: example has 4 tokens") {
		t.Errorf("seq shorter than an example: error %v", err)
	}
	if l, _ := NewLoader(ds, LoaderOptions{BatchSize: 1, GradAccum: 1}); l.Seq() != 4 {
		t.Errorf("default seq %d, want the longest example, 4", l.Seq())
	}
	for _, o := range []LoaderOptions{{BatchSize: 0, GradAccum: 1}, {BatchSize: 1, GradAccum: 0}, {BatchSize: 1, GradAccum: 1, Seq: -1}} {
		if _, err := NewLoader(ds, o); err == nil {
			t.Errorf("NewLoader(%+v) accepted", o)
		}
	}
	if _, err := NewLoader(&Dataset{}, LoaderOptions{BatchSize: 1, GradAccum: 1}); err == nil {
		t.Error("NewLoader on an empty dataset accepted")
	}
}

func TestEvalBatches(t *testing.T) {
	ds := syntheticDataset(7)
	batches, err := EvalBatches(ds, 3, 8)
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 3 {
		t.Fatalf("%d batches, want 3", len(batches))
	}
	if got := rowsOf(batches); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, -1, -1}) {
		t.Errorf("rows %v", got)
	}
	total := 0
	for _, b := range batches {
		if b.Rows != 3 || b.Seq != 8 {
			t.Errorf("shape %dx%d, want 3x8", b.Rows, b.Seq)
		}
		total += TargetCount(b)
	}
	want := 0
	for i := range 7 {
		want += i%5 + 1 // every token but the first of each example is scored
	}
	if total != want {
		t.Errorf("%d targets, want %d", total, want)
	}
}
