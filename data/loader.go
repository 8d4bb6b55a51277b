package data

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
)

// PadID is the input id of padding positions (masked out, label IgnoreIndex).
const PadID = 0

// Batch is one right-padded micro-batch on the host, Rows x Seq row-major; it
// has the fields of model.Batch.
type Batch struct {
	Rows, Seq int
	InputIDs  []int32
	Mask      []int32 // attention mask: 1 for real tokens, 0 for padding
	Labels    []int32 // IgnoreIndex where not scored
}

// TargetCount is the number of loss targets in b: positions t with mask 1
// whose next label labels[t+1] (same row) is not IgnoreIndex.
func TargetCount(b Batch) int {
	n := 0
	for r := range b.Rows {
		row := r * b.Seq
		for t := 0; t+1 < b.Seq; t++ {
			if b.Mask[row+t] != 0 && b.Labels[row+t+1] != IgnoreIndex {
				n++
			}
		}
	}
	return n
}

// newBatch returns an all-padding batch.
func newBatch(rows, seq int) Batch {
	b := Batch{Rows: rows, Seq: seq, InputIDs: make([]int32, rows*seq), Mask: make([]int32, rows*seq), Labels: make([]int32, rows*seq)}
	for i := range b.Labels {
		b.InputIDs[i] = PadID
		b.Labels[i] = IgnoreIndex
	}
	return b
}

// setRow copies ex into row r, leaving the rest of the row as padding.
func (b *Batch) setRow(r int, ex *Example) {
	row := r * b.Seq
	copy(b.InputIDs[row:], ex.IDs)
	copy(b.Labels[row:], ex.Labels)
	for t := range ex.IDs {
		b.Mask[row+t] = 1
	}
}

// LoaderOptions configure a Loader.
type LoaderOptions struct {
	BatchSize int // examples per micro-batch
	GradAccum int // micro-batches per optimizer step
	Shuffle   bool
	Seed      uint64
	// Seq pads every micro-batch to this length, so the GPU workspace keeps
	// one shape (0: the dataset's longest example).
	Seq int
}

// Cursor is a Loader's position, for checkpoints.
type Cursor struct {
	Epoch int    `json:"epoch"`
	Step  int    `json:"step"` // optimizer steps done in this epoch
	Seed  uint64 `json:"seed"`
	// Examples is the dataset size when the cursor was taken; Seek refuses a
	// cursor from a different dataset size (0: unchecked).
	Examples int `json:"examples,omitempty"`
}

// Loader hands out the micro-batches of each optimizer step in the Hugging
// Face Trainer's order: file order, or a seeded permutation per epoch;
// micro-batches of BatchSize consecutive examples (the last may hold fewer);
// GradAccum micro-batches per step (the last step of an epoch may have fewer).
type Loader struct {
	ds                           *Dataset
	opts                         LoaderOptions
	seq                          int
	microPerEpoch, stepsPerEpoch int
	epoch, step                  int
	order                        []int // example order of orderEpoch
	orderEpoch                   int
}

// NewLoader checks the options against the dataset and starts at epoch 0.
func NewLoader(ds *Dataset, opts LoaderOptions) (*Loader, error) {
	if ds == nil || len(ds.Examples) == 0 {
		return nil, errors.New("data: loader needs a dataset with examples")
	}
	if opts.BatchSize < 1 || opts.GradAccum < 1 || opts.Seq < 0 {
		return nil, fmt.Errorf("data: loader: batch size %d and gradient accumulation %d must be >= 1, seq %d >= 0",
			opts.BatchSize, opts.GradAccum, opts.Seq)
	}
	seq := opts.Seq
	if seq == 0 {
		for i := range ds.Examples {
			seq = max(seq, len(ds.Examples[i].IDs))
		}
	}
	for i := range ds.Examples {
		if n := len(ds.Examples[i].IDs); n > seq {
			return nil, fmt.Errorf("data: %s:%d: example has %d tokens, more than the batch length %d (set a max sequence length)",
				ds.Path, ds.Examples[i].Line, n, seq)
		}
	}
	n := len(ds.Examples)
	micro := (n + opts.BatchSize - 1) / opts.BatchSize
	return &Loader{
		ds: ds, opts: opts, seq: seq,
		microPerEpoch: micro,
		stepsPerEpoch: (micro + opts.GradAccum - 1) / opts.GradAccum,
		orderEpoch:    -1,
	}, nil
}

// StepsPerEpoch is ceil(ceil(n / batch) / grad_accum).
func (l *Loader) StepsPerEpoch() int { return l.stepsPerEpoch }

// MicroBatchesPerEpoch is ceil(n / batch).
func (l *Loader) MicroBatchesPerEpoch() int { return l.microPerEpoch }

// Seq is the padded length of every micro-batch.
func (l *Loader) Seq() int { return l.seq }

// Next returns the micro-batches of the next optimizer step and the epoch
// reached after it, as the Trainer logs it (epoch + micro-batches done /
// micro-batches per epoch); after an epoch's last step it moves on to the
// next epoch.
func (l *Loader) Next() (micro []Batch, epoch float64, err error) {
	order := l.epochOrder(l.epoch)
	n, bs := len(l.ds.Examples), l.opts.BatchSize
	first := l.step * l.opts.GradAccum
	last := min(first+l.opts.GradAccum, l.microPerEpoch)
	micro = make([]Batch, 0, last-first)
	for m := first; m < last; m++ {
		b := newBatch(bs, l.seq)
		for r := 0; r < bs && m*bs+r < n; r++ {
			b.setRow(r, &l.ds.Examples[order[m*bs+r]])
		}
		micro = append(micro, b)
	}
	epoch = float64(l.epoch) + float64(last)/float64(l.microPerEpoch)
	l.step++
	if l.step == l.stepsPerEpoch {
		l.epoch, l.step = l.epoch+1, 0
	}
	return micro, epoch, nil
}

// Cursor is the position of the next step.
func (l *Loader) Cursor() Cursor {
	return Cursor{Epoch: l.epoch, Step: l.step, Seed: l.opts.Seed, Examples: len(l.ds.Examples)}
}

// Seek moves to a cursor taken from a loader over the same data. The cursor's
// seed replaces the loader's, so a resumed run replays the checkpointed run's
// order.
func (l *Loader) Seek(c Cursor) error {
	if c.Epoch < 0 || c.Step < 0 || c.Step >= l.stepsPerEpoch {
		return fmt.Errorf("data: cursor epoch %d step %d outside an epoch of %d steps (has the data or batch size changed?)",
			c.Epoch, c.Step, l.stepsPerEpoch)
	}
	if c.Examples != 0 && c.Examples != len(l.ds.Examples) {
		return fmt.Errorf("data: cursor was taken over %d examples, the data has %d", c.Examples, len(l.ds.Examples))
	}
	if c.Seed != l.opts.Seed {
		l.opts.Seed, l.orderEpoch = c.Seed, -1
	}
	l.epoch, l.step = c.Epoch, c.Step
	return nil
}

// epochOrder returns the example order of an epoch, caching the latest.
func (l *Loader) epochOrder(epoch int) []int {
	if l.orderEpoch == epoch {
		return l.order
	}
	n := len(l.ds.Examples)
	if l.order == nil {
		l.order = make([]int, n)
	}
	for i := range l.order {
		l.order[i] = i
	}
	if l.opts.Shuffle {
		shuffle(l.order, l.opts.Seed, epoch)
	}
	l.orderEpoch = epoch
	return l.order
}

// shuffle is a Fisher-Yates shuffle driven by PCG(seed, epoch), so an epoch's
// order follows from the cursor alone. It draws bounded integers itself
// (Lemire's method) rather than through rand.Rand, whose algorithms Go may
// change between releases: a checkpoint must resume to the same order.
func shuffle(order []int, seed uint64, epoch int) {
	src := rand.NewPCG(seed, uint64(epoch))
	for i := len(order) - 1; i > 0; i-- {
		j := uniformBelow(src, uint64(i+1))
		order[i], order[j] = order[j], order[i]
	}
}

// uniformBelow returns a uniform integer in [0, n), n > 0.
func uniformBelow(src *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		threshold := -n % n
		for lo < threshold {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}

// EvalBatches cuts a dataset in file order into micro-batches of batchSize
// rows and seq columns (0: the longest example), the last padded with empty
// rows.
func EvalBatches(ds *Dataset, batchSize, seq int) ([]Batch, error) {
	l, err := NewLoader(ds, LoaderOptions{BatchSize: batchSize, GradAccum: 1, Seq: seq})
	if err != nil {
		return nil, err
	}
	out := make([]Batch, 0, l.microPerEpoch)
	for range l.stepsPerEpoch {
		micro, _, _ := l.Next()
		out = append(out, micro...)
	}
	return out, nil
}
