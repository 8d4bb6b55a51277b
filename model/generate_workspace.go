package model

import (
	"context"
	"fmt"

	"github.com/sparselora/sparselora/gpu"
)

// Generator runs one sequence through the model for generation, keeping the
// keys and values of every position it has seen (a KV cache per layer) so that
// each new token costs O(context): its projections, RoPE at its position,
// DecodeAttention over the cache, and the MLP. Prompts are fed in chunks of up
// to ChunkRows tokens, each a batched forward over the chunk's rows.
//
// It holds no gradient scratch and shares nothing with a training Workspace:
// the adapters' per-pass intermediate (xa) is the generator's own scratch, so
// generating between a training forward and its backward changes nothing the
// backward reads. A Generator is not safe for concurrent use.
type Generator struct {
	m *Model
	// MaxSeq is the number of positions the cache holds; ChunkRows the most
	// tokens one forward runs (the activations' rows).
	MaxSeq, ChunkRows int
	pos               int

	kCache, vCache []*gpu.Tensor // per layer [MaxSeq, kvHeads*headDim]
	// One chunk's activations, reused by every layer.
	ids              *gpu.Tensor // [ChunkRows] u32; nil with a host embedding table
	x, mid, xn, rstd *gpu.Tensor // residual in and after attention, norm output
	q, attn          *gpu.Tensor // [ChunkRows, heads*headDim]
	gate, up, h      *gpu.Tensor // [ChunkRows, intermediate]
	normed, logits   *gpu.Tensor // the last row's final norm and logits
	rstdF            *gpu.Tensor
	xa               *gpu.Tensor // adapters' x A^T, [ChunkRows * xaRank]
	xaRank           int
	headBlock        int // vocabulary rows of the LM head bound at once
	rec              *gpu.Recorder
	all              []*gpu.Tensor
}

// NewGenerator allocates a generator whose cache holds maxSeq positions and
// which runs prompts chunkRows tokens at a time (chunkRows <= 0: 256, and
// never more than maxSeq).
func (m *Model) NewGenerator(maxSeq, chunkRows int) (*Generator, error) {
	c := m.Config
	if maxSeq <= 0 {
		return nil, fmt.Errorf("new generator: %d positions, want at least 1", maxSeq)
	}
	if m.Rope == nil || maxSeq > m.Rope.Seq {
		have := 0
		if m.Rope != nil {
			have = m.Rope.Seq
		}
		return nil, fmt.Errorf("new generator: %d positions exceed the model's %d (RoPE table)", maxSeq, have)
	}
	if c.SlidingWindow > 0 && maxSeq > c.SlidingWindow {
		return nil, fmt.Errorf("%s: generating %d positions exceeds sliding_window %d, which sparselora does not implement", c.Path, maxSeq, c.SlidingWindow)
	}
	if chunkRows <= 0 {
		chunkRows = 256
	}
	chunkRows = min(chunkRows, maxSeq)
	g := &Generator{m: m, MaxSeq: maxSeq, ChunkRows: chunkRows}
	H, I, R := c.HiddenSize, c.IntermediateSize, chunkRows
	qDim, kvDim := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	var err error
	alloc := func(label string, shape ...int) *gpu.Tensor {
		if err != nil {
			return nil
		}
		var t *gpu.Tensor
		if t, err = m.Dev.NewTensor(gpu.F32, label, shape...); err == nil {
			g.all = append(g.all, t)
		}
		return t
	}
	if bytes := uint64(4 * maxSeq * kvDim); bytes > m.Dev.Limits.MaxStorageBufferBindingSize {
		return nil, fmt.Errorf("new generator: a KV cache of %d positions x %d needs %d bytes per layer, over the device's maxStorageBufferBindingSize %d",
			maxSeq, kvDim, bytes, m.Dev.Limits.MaxStorageBufferBindingSize)
	}
	for range m.Layers {
		g.kCache = append(g.kCache, alloc("key cache", maxSeq, kvDim))
		g.vCache = append(g.vCache, alloc("value cache", maxSeq, kvDim))
	}
	if m.HostEmbed == nil { // else the host writes the embedded rows
		g.ids = alloc("generation ids", R)
	}
	g.x, g.mid, g.xn, g.rstd = alloc("generation residual", R, H), alloc("generation mid", R, H), alloc("generation norm", R, H), alloc("generation rstd", R)
	g.q, g.attn = alloc("generation q", R, qDim), alloc("generation attention", R, qDim)
	g.gate, g.up, g.h = alloc("generation gate", R, I), alloc("generation up", R, I), alloc("generation h", R, I)
	g.normed, g.rstdF, g.logits = alloc("generation final norm", 1, H), alloc("generation final rstd", 1), alloc("generation logits", 1, c.VocabSize)
	if err != nil {
		g.Release()
		return nil, fmt.Errorf("new generator of %d positions: %w", maxSeq, err)
	}
	lim := m.Dev.Limits
	rowBytes := weightRowBytes(m.Head, H)
	g.headBlock = int(min(uint64(c.VocabSize), (lim.MaxStorageBufferBindingSize-uint64(lim.MinStorageBufferOffsetAlignment))/rowBytes))
	if m.Head.DType == gpu.BF16 && g.headBlock < c.VocabSize {
		g.headBlock &^= 1 // blocks must start on a whole u32 of packed bf16
	}
	if g.headBlock < 1 {
		g.Release()
		return nil, fmt.Errorf("new generator: one LM head row of %d exceeds the binding limit", H)
	}
	g.rec = m.Dev.NewRecorder()
	return g, nil
}

// Release frees the generator's GPU memory.
func (g *Generator) Release() {
	for _, t := range g.all {
		t.Release()
	}
	g.all = nil
	g.xa.Release()
	g.xa = nil
	if g.rec != nil {
		g.rec.Release()
		g.rec = nil
	}
}

// Len is the number of positions in the cache.
func (g *Generator) Len() int { return g.pos }

// Reset empties the cache, to start another sequence.
func (g *Generator) Reset() { g.pos = 0 }

// Append runs tokens through the model at the next positions, adding their
// keys and values to the cache, and returns the logits ([vocab]) after the
// last one. The model's adapters as attached now take part.
func (g *Generator) Append(ctx context.Context, tokens []int32) ([]float32, error) {
	if g.rec == nil {
		return nil, fmt.Errorf("generator: released")
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("generator: no tokens to append")
	}
	if g.pos+len(tokens) > g.MaxSeq {
		return nil, fmt.Errorf("generator: %d tokens after %d exceed the cache's %d positions", len(tokens), g.pos, g.MaxSeq)
	}
	V := g.m.Config.VocabSize
	for i, t := range tokens {
		if t < 0 || int(t) >= V {
			return nil, fmt.Errorf("generator: token %d (id %d) outside the vocabulary (%d)", i, t, V)
		}
	}
	if err := g.ensureAdapterScratch(); err != nil {
		return nil, err
	}
	for c0 := 0; c0 < len(tokens); c0 += g.ChunkRows {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		chunk := tokens[c0:min(c0+g.ChunkRows, len(tokens))]
		last := c0+len(chunk) == len(tokens)
		if err := g.forward(chunk, last); err != nil {
			g.rec.Release() // drop what was recorded; a fresh recorder follows
			g.rec = g.m.Dev.NewRecorder()
			return nil, err
		}
		if err := g.rec.Submit(); err != nil {
			return nil, fmt.Errorf("generator: %w", err)
		}
		g.pos += len(chunk)
	}
	logits, err := g.logits.Download(ctx)
	if err != nil {
		return nil, fmt.Errorf("generator: reading logits: %w", err)
	}
	return logits, nil
}

// ensureAdapterScratch sizes xa for the largest rank of the attached adapters.
func (g *Generator) ensureAdapterScratch() error {
	rank := 0
	for _, l := range g.m.Layers {
		for _, a := range l.Adapters {
			if a != nil {
				rank = max(rank, a.Rank())
			}
		}
	}
	if rank <= g.xaRank {
		return nil
	}
	xa, err := g.m.Dev.NewTensor(gpu.F32, "generation adapter x A^T", g.ChunkRows*rank)
	if err != nil {
		return fmt.Errorf("generator: adapter scratch of rank %d: %w", rank, err)
	}
	g.xa.Release()
	g.xa, g.xaRank = xa, rank
	return nil
}

// forward records one chunk at positions g.pos.., and the logits of its last
// row when last is set.
func (g *Generator) forward(chunk []int32, last bool) error {
	m, rec := g.m, g.rec
	c := m.Config
	R, start := len(chunk), g.pos
	H, I := c.HiddenSize, c.IntermediateSize
	qDim, kvDim := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	eps := float32(c.RMSNormEps)
	ids := make([]uint32, R)
	for i, t := range chunk {
		ids[i] = uint32(t)
	}
	x, mid, xn := rowsOf(g.x, 0, R, H), rowsOf(g.mid, 0, R, H), rowsOf(g.xn, 0, R, H)
	rstd, q, attn := rowsOf(g.rstd, 0, R, 1), rowsOf(g.q, 0, R, qDim), rowsOf(g.attn, 0, R, qDim)
	gate, up, h := rowsOf(g.gate, 0, R, I), rowsOf(g.up, 0, R, I), rowsOf(g.h, 0, R, I)
	if err := g.embed(ids, x); err != nil {
		return fmt.Errorf("generator: embedding: %w", err)
	}
	shape := DecodeAttentionShape{Start: start, Rows: R, Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads, HeadDim: c.HeadDim}
	for i, l := range m.Layers {
		k, v := rowsOf(g.kCache[i], start, R, kvDim), rowsOf(g.vCache[i], start, R, kvDim)
		steps := []func() error{
			func() error { return RMSNormForward(rec, x, l.InputNorm, xn, rstd, R, H, eps) },
			func() error { return g.project(l, ProjQ, xn, q, R, false) },
			func() error { return g.project(l, ProjK, xn, k, R, false) },
			func() error { return g.project(l, ProjV, xn, v, R, false) },
			func() error { return RopeForwardAt(rec, m.Rope, q, R, start, c.NumAttentionHeads, c.HeadDim) },
			func() error { return RopeForwardAt(rec, m.Rope, k, R, start, c.NumKeyValueHeads, c.HeadDim) },
			func() error { return DecodeAttention(rec, shape, q, g.kCache[i], g.vCache[i], attn) },
			func() error {
				rec.Copy(mid.Buf, mid.Offset, x.Buf, x.Offset, x.Bytes())
				return g.project(l, ProjO, attn, mid, R, true)
			},
			func() error { return RMSNormForward(rec, mid, l.PostNorm, xn, rstd, R, H, eps) },
			func() error { return g.project(l, ProjGate, xn, gate, R, false) },
			func() error { return g.project(l, ProjUp, xn, up, R, false) },
			func() error { return SwiGLUForward(rec, gate, up, h, R*I) },
			func() error {
				rec.Copy(x.Buf, x.Offset, mid.Buf, mid.Offset, mid.Bytes())
				return g.project(l, ProjDown, h, x, R, true)
			},
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return fmt.Errorf("generator: layer %d: %w", i, err)
			}
		}
	}
	if !last {
		return nil
	}
	if err := RMSNormForward(rec, rowsOf(g.x, R-1, 1, H), m.Norm, g.normed, g.rstdF, 1, H, eps); err != nil {
		return fmt.Errorf("generator: final norm: %w", err)
	}
	// The LM head as a matrix-vector product, in blocks of vocabulary rows that
	// fit one storage binding.
	V := c.VocabSize
	for v0 := 0; v0 < V; v0 += g.headBlock {
		n := min(g.headBlock, V-v0)
		out := &gpu.Tensor{Buf: g.logits.Buf, Offset: g.logits.Offset + uint64(4*v0), Shape: []int{1, n}, DType: gpu.F32}
		if err := matVec(rec, g.normed, weightRows(m.Head, v0, n, H), out, 1, n, H, n, 0); err != nil {
			return fmt.Errorf("generator: logits of tokens %d..%d: %w", v0, v0+n, err)
		}
	}
	return nil
}

// embed puts the embeddings of the chunk's tokens into x: rows looked up in
// the model's host table and written now (a queue write, which the chunk's
// submission follows: Append submits every chunk before the next one), or
// the ids written and the GPU lookup recorded.
func (g *Generator) embed(ids []uint32, x *gpu.Tensor) error {
	m, R := g.m, len(ids)
	if m.HostEmbed != nil {
		rows := make([]float32, R*m.HostEmbed.Cols)
		if err := m.HostEmbed.Lookup(ids, rows); err != nil {
			return err
		}
		return x.Buf.Write(x.Offset, gpu.F32Bytes(rows))
	}
	if err := g.ids.Buf.Write(g.ids.Offset, gpu.U32Bytes(ids)); err != nil {
		return fmt.Errorf("writing token ids: %w", err)
	}
	return EmbeddingForward(g.rec, m.Embed, rowsOf(g.ids, 0, R, 1), x, R, m.Config.HiddenSize)
}

// project records y (+)= x W^T (+ b) + adapter(x) for rows rows.
func (g *Generator) project(l *Layer, p Projection, x, y *gpu.Tensor, rows int, accumulate bool) error {
	forward := l.Proj[p].Forward
	if rows <= linearDecodeMaxRows {
		forward = l.Proj[p].forwardFewRows
	}
	if err := forward(g.rec, x, y, rows, accumulate); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	a := l.Adapters[p]
	if a == nil {
		return nil
	}
	xa := rowsOf(g.xa, 0, rows, a.Rank())
	if err := a.Forward(g.rec, x, y, xa, RowSet{Count: rows}); err != nil {
		return fmt.Errorf("%s adapter: %w", p, err)
	}
	return nil
}
