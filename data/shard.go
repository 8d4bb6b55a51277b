package data

import "fmt"

// Shard is process rank's part of a micro-batch of a data-parallel run of
// world processes (SPEC.md section 12): rows rank, rank+world, ... of b,
// whose rows must divide by world. Rows past the examples stay padding.
func Shard(b Batch, rank, world int) (Batch, error) {
	if world < 1 || rank < 0 || rank >= world || b.Rows%world != 0 {
		return Batch{}, fmt.Errorf("data: cannot take rank %d's share of %d rows among %d processes", rank, b.Rows, world)
	}
	out := newBatch(b.Rows/world, b.Seq)
	for r := range out.Rows {
		src, dst := (rank+r*world)*b.Seq, r*b.Seq
		copy(out.InputIDs[dst:dst+b.Seq], b.InputIDs[src:src+b.Seq])
		copy(out.Mask[dst:dst+b.Seq], b.Mask[src:src+b.Seq])
		copy(out.Labels[dst:dst+b.Seq], b.Labels[src:src+b.Seq])
	}
	return out, nil
}

// ShardExamples is process rank's part of a data set evaluated by world
// processes: examples rank, rank+world, ...
func ShardExamples(ds *Dataset, rank, world int) *Dataset {
	out := *ds
	out.Examples = nil
	for i := rank; i < len(ds.Examples); i += world {
		out.Examples = append(out.Examples, ds.Examples[i])
	}
	return &out
}

// FeedsWorld checks that every micro-batch of a data set of n examples gives
// each of world processes (batch examples each) at least one example: the
// last micro-batch of an epoch holds n mod (world x batch) of them, which go
// to processes 0, 1, ... in turn.
func FeedsWorld(n, world, batch int) error {
	per := world * batch
	rest := n % per
	if rest == 0 || rest >= world {
		return nil
	}
	idle := fmt.Sprintf("processes %d to %d", rest, world-1)
	if rest == world-1 {
		idle = fmt.Sprintf("process %d", rest)
	}
	return fmt.Errorf("%d examples in micro-batches of %d processes x %d: the last micro-batch of an epoch holds %d, leaving %s without an example; choose a number of processes or a --batch-size for which it holds at least %d (or none), or add or drop examples",
		n, world, batch, rest, idle, world)
}
