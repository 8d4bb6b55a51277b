package data

import (
	"strings"
	"testing"
)

// TestShardTakesEveryWorldthRow: rank r of w takes rows r, r+w, ... in
// order, padding included.
func TestShardTakesEveryWorldthRow(t *testing.T) {
	const rows, seq, world = 6, 3, 3
	b := newBatch(rows, seq)
	for i := range b.InputIDs {
		b.InputIDs[i], b.Mask[i], b.Labels[i] = int32(i), int32(i%2), int32(100+i)
	}
	for rank := range world {
		s, err := Shard(b, rank, world)
		if err != nil {
			t.Fatal(err)
		}
		if s.Rows != rows/world || s.Seq != seq {
			t.Fatalf("rank %d: shape %dx%d", rank, s.Rows, s.Seq)
		}
		for r := range s.Rows {
			src := (rank + r*world) * seq
			for c := range seq {
				i, j := r*seq+c, src+c
				if s.InputIDs[i] != b.InputIDs[j] || s.Mask[i] != b.Mask[j] || s.Labels[i] != b.Labels[j] {
					t.Fatalf("rank %d row %d col %d: got (%d %d %d), want row %d's", rank, r, c, s.InputIDs[i], s.Mask[i], s.Labels[i], rank+r*world)
				}
			}
		}
	}
	if _, err := Shard(b, 0, 4); err == nil {
		t.Error("6 rows shared among 4 processes accepted")
	}
	if _, err := Shard(b, 3, 3); err == nil {
		t.Error("rank 3 of 3 accepted")
	}
}

func TestFeedsWorld(t *testing.T) {
	for _, c := range []struct {
		n, world, batch int
		ok              bool
	}{
		{24, 2, 1, true}, {25, 2, 1, false}, {26, 2, 2, true}, {25, 2, 2, false}, {9, 4, 2, false}, {12, 4, 2, true}, {3, 4, 1, false}, {1, 1, 4, true},
	} {
		err := FeedsWorld(c.n, c.world, c.batch)
		if (err == nil) != c.ok {
			t.Errorf("%d examples, %d processes x %d: %v", c.n, c.world, c.batch, err)
		}
		if err != nil && !strings.Contains(err.Error(), "without an example") {
			t.Errorf("unclear error: %v", err)
		}
	}
}

func TestShardExamples(t *testing.T) {
	ds := &Dataset{Path: "x.jsonl", Examples: make([]Example, 5)}
	for i := range ds.Examples {
		ds.Examples[i].Line = i + 1
	}
	got := ShardExamples(ds, 1, 2)
	if len(got.Examples) != 2 || got.Examples[0].Line != 2 || got.Examples[1].Line != 4 || got.Path != ds.Path || len(ds.Examples) != 5 {
		t.Fatalf("rank 1 of 2: %+v", got.Examples)
	}
}
