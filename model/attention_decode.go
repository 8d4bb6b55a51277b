package model

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

// Attention of new query rows against a KV cache, for generation: the kernel in
// shaders/attention_decode.wgsl (whose header documents layouts and math) runs
// one workgroup per query head and query row, so a token costs one pass over
// the cache, O(context), where AttentionForward would redo the whole sequence.

const (
	decodeAttentionShader = "attention_decode.wgsl"
	// decodeAttentionWorkgroup invocations share one (head, query row): keys
	// are scored that many at a time, and the head dims times key groups split
	// the weighted sum of values. A power of two, within WebGPU's default
	// limit of 256 invocations.
	decodeAttentionWorkgroup = 128
)

// DecodeAttentionShape is the geometry of one DecodeAttention call: Rows new
// query rows at positions Start .. Start+Rows-1 of one sequence, whose keys and
// values (after RoPE for the keys) already sit in rows 0 .. Start+Rows-1 of the
// cache.
type DecodeAttentionShape struct {
	Start, Rows    int
	Heads, KVHeads int // query heads, key/value heads (KVHeads divides Heads)
	HeadDim        int
}

// Keys is the number of cache rows the call reads, Start+Rows.
func (s DecodeAttentionShape) Keys() int { return s.Start + s.Rows }

// Validate checks that the shape is positive, that KVHeads divides Heads and
// that every array's elements are reachable with u32 indices.
func (s DecodeAttentionShape) Validate() error {
	if s.Start < 0 || s.Rows <= 0 || s.Heads <= 0 || s.KVHeads <= 0 || s.HeadDim <= 0 {
		return fmt.Errorf("decode attention shape %+v: start must be non-negative and every size positive", s)
	}
	if s.Heads%s.KVHeads != 0 {
		return fmt.Errorf("decode attention shape %+v: %d kv heads do not divide %d query heads", s, s.KVHeads, s.Heads)
	}
	if uint64(s.Keys())*uint64(s.Heads)*uint64(s.HeadDim) > math.MaxUint32 {
		return fmt.Errorf("decode attention shape %+v: arrays exceed u32 indexing", s)
	}
	return nil
}

// DecodeAttention records out = softmax(q k^T / sqrt(HeadDim), causal) v per
// head for s.Rows query rows against the first s.Keys() rows of the cache:
//
//	q, out          [Rows, Heads*HeadDim] f32 (query row r is position Start+r)
//	kCache, vCache  [maxSeq, KVHeads*HeadDim] f32, maxSeq >= Start+Rows; rows
//	                from Start+Rows on are not read
//
// Query row r attends cache rows 0 .. Start+r; query head h reads kv head
// h/(Heads/KVHeads). out is overwritten and must not share a buffer with q or
// the cache (WebGPU forbids binding one buffer writable and read-only in one
// dispatch); q and the caches may share buffers.
func DecodeAttention(rec *gpu.Recorder, s DecodeAttentionShape, q, kCache, vCache, out *gpu.Tensor) error {
	const op = "decode attention"
	if rec == nil || rec.Device() == nil {
		return fmt.Errorf("%s: nil recorder or device", op)
	}
	dev := rec.Device()
	if err := s.Validate(); err != nil {
		return err
	}
	qElems, kvRow := s.Rows*s.Heads*s.HeadDim, s.KVHeads*s.HeadDim
	// Bind only the cache rows the call reads.
	var caches [2]*gpu.Tensor
	for i, c := range []struct {
		name string
		t    *gpu.Tensor
	}{{"kCache", kCache}, {"vCache", vCache}} {
		if c.t == nil {
			return fmt.Errorf("%s: %s is nil", op, c.name)
		}
		if n := c.t.Len(); n%kvRow != 0 || n/kvRow < s.Keys() {
			return fmt.Errorf("%s: %s has shape %v, want [rows >= %d, %d]", op, c.name, c.t.Shape, s.Keys(), kvRow)
		}
		caches[i] = &gpu.Tensor{Buf: c.t.Buf, Offset: c.t.Offset, Shape: []int{s.Keys(), kvRow}, DType: c.t.DType}
	}
	inputs := []attentionOperand{{"q", q, qElems}, {"kCache", caches[0], s.Keys() * kvRow}, {"vCache", caches[1], s.Keys() * kvRow}}
	outputs := []attentionOperand{{"out", out, qElems}}
	if err := checkDispatchOperands(dev, inputs, outputs); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if limit := dev.Limits.MaxComputeWorkgroupsPerDimension; uint64(s.Heads) > uint64(limit) || uint64(s.Rows) > uint64(limit) {
		return fmt.Errorf("%s: a grid of %d heads x %d rows exceeds maxComputeWorkgroupsPerDimension %d", op, s.Heads, s.Rows, limit)
	}
	size := decodeAttentionWorkgroup
	if lim := dev.Limits; uint32(size) > lim.MaxComputeInvocationsPerWorkgroup || uint32(size) > lim.MaxComputeWorkgroupSizeX {
		return fmt.Errorf("%s: needs %d invocations per workgroup, the device allows %d", op, size, lim.MaxComputeInvocationsPerWorkgroup)
	}
	if need := decodeAttentionWorkgroupBytes(s.HeadDim, size); need > uint64(dev.Limits.MaxComputeWorkgroupStorageSize) {
		return fmt.Errorf("%s: head dim %d needs %d bytes of workgroup memory, the device allows %d",
			op, s.HeadDim, need, dev.Limits.MaxComputeWorkgroupStorageSize)
	}
	kernel, err := dev.Kernel(decodeAttentionShader, gpu.U32("HEAD_DIM", s.HeadDim), gpu.U32("WORKGROUP_SIZE", size))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	tensors := []*gpu.Tensor{q, caches[0], caches[1], out}
	bindings := make([]gpu.Binding, len(tensors))
	bases := make([]uint32, len(tensors))
	for i, t := range tensors {
		bindings[i], bases[i] = t.View()
	}
	params := gpu.PackParams(uint32(s.Start), uint32(s.Heads), uint32(s.KVHeads), uint32(s.Heads/s.KVHeads),
		bases[0], bases[1], bases[2], bases[3],
		math.Float32bits(float32(1/math.Sqrt(float64(s.HeadDim)))), uint32(s.HeadDim), 0, 0)
	if err := rec.Dispatch(gpu.KindAttentionDecode, kernel, params, bindings, uint32(s.Heads), uint32(s.Rows), 1); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// decodeAttentionWorkgroupBytes mirrors the workgroup arrays of
// attention_decode.wgsl, each rounded up to 16 bytes.
func decodeAttentionWorkgroupBytes(headDim, size int) uint64 {
	lanes := min(headDim, size)
	parts := size / lanes
	partStride := lanes * ((headDim + lanes - 1) / lanes)
	var total uint64
	for _, floats := range []int{headDim, size, size, parts * partStride} {
		total += (4*uint64(floats) + 15) &^ 15
	}
	return total
}
