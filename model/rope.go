package model

import (
	"fmt"
	"math"

	"github.com/sparselora/sparselora/gpu"
)

const ropeShader = "rope.wgsl"

// RopeTable holds cos and sin of every rotary angle pos * invFreq[e] for
// positions pos < Seq, on the GPU as one f32 tensor [2, Seq, HalfDim] (cos, then
// sin). The angles are computed in float64 on the host and rounded once, so the
// table is as exact as f32 allows. (HF computes the angle itself in f32, which
// at positions in the thousands differs from the exact angle by up to ~1e-4
// rad; the fixtures' short sequences do not see this.)
type RopeTable struct {
	// Seq is the number of positions the table covers; HalfDim = head_dim/2.
	Seq, HalfDim int
	dev          *gpu.Device
	values       *gpu.Tensor
}

// NewRopeTable computes the table for positions 0..seq-1 from the inverse
// frequencies of one head (head_dim/2 of them, including any rope scaling).
func NewRopeTable(dev *gpu.Device, invFreq []float64, seq int) (*RopeTable, error) {
	if dev == nil {
		return nil, fmt.Errorf("NewRopeTable: nil device")
	}
	half := len(invFreq)
	if half == 0 || seq < 1 {
		return nil, fmt.Errorf("NewRopeTable: %d inverse frequencies and %d positions, want at least one of each", half, seq)
	}
	for e, f := range invFreq {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("NewRopeTable: inverse frequency %d is %g", e, f)
		}
	}
	if err := checkU32Elements("NewRopeTable", 2, seq, half); err != nil {
		return nil, err
	}
	if bytes := uint64(8 * seq * half); bytes > dev.Limits.MaxStorageBufferBindingSize {
		return nil, fmt.Errorf("NewRopeTable: a table of %d positions x %d frequencies needs %d bytes, over the adapter's maxStorageBufferBindingSize %d",
			seq, half, bytes, dev.Limits.MaxStorageBufferBindingSize)
	}
	values := make([]float32, 2*seq*half)
	sines := values[seq*half:]
	for pos := range seq {
		for e, f := range invFreq {
			sin, cos := math.Sincos(float64(pos) * f)
			values[pos*half+e] = float32(cos)
			sines[pos*half+e] = float32(sin)
		}
	}
	t, err := dev.NewTensor(gpu.F32, "rope cos/sin table", 2, seq, half)
	if err != nil {
		return nil, fmt.Errorf("NewRopeTable: %w", err)
	}
	if err := t.Upload(values); err != nil {
		t.Release()
		return nil, fmt.Errorf("NewRopeTable: %w", err)
	}
	return &RopeTable{Seq: seq, HalfDim: half, dev: dev, values: t}, nil
}

// Release frees the table's GPU memory; releasing twice is harmless.
func (t *RopeTable) Release() {
	if t != nil && t.values != nil {
		t.values.Release()
		t.values = nil
	}
}

// RopeForward records HF's rotate_half rotary embedding in place on x, a
// row-major f32 [rows, heads*headDim] array of queries or keys: in each head,
// dims e and e+headDim/2 rotate by the angle pos*invFreq[e], where row t has
// position t mod seq (each batch row of seq tokens starts at 0, padded ones too).
// rows must be a multiple of seq, and seq at most the table's Seq.
func RopeForward(rec *gpu.Recorder, table *RopeTable, x *gpu.Tensor, rows, seq, heads, headDim int) error {
	return rope("RopeForward", rec, table, x, rows, seq, 0, heads, headDim, 1, 0)
}

// RopeBackward records the gradient of RopeForward in place on dx: the rotation
// is orthogonal, so its transpose is the rotation by -angle.
func RopeBackward(rec *gpu.Recorder, table *RopeTable, dx *gpu.Tensor, rows, seq, heads, headDim int) error {
	return rope("RopeBackward", rec, table, dx, rows, seq, 0, heads, headDim, -1, 0)
}

// rope records one rotation; sinSign is +1 forward and -1 backward, gridLimit
// the per-dimension workgroup limit (0: the device's).
// RopeForwardAt rotates rows rows of one sequence that start at position start
// (a decoding step with a KV cache: the new token's q and k).
func RopeForwardAt(rec *gpu.Recorder, table *RopeTable, x *gpu.Tensor, rows, start, heads, headDim int) error {
	if start < 0 || start+rows > table.Seq {
		return fmt.Errorf("RopeForwardAt: positions %d..%d outside the table's %d", start, start+rows-1, table.Seq)
	}
	return rope("RopeForwardAt", rec, table, x, rows, rows, start, heads, headDim, 1, 0)
}

func rope(op string, rec *gpu.Recorder, table *RopeTable, x *gpu.Tensor, rows, seq, start, heads, headDim int, sinSign float32, gridLimit uint32) error {
	if table == nil || table.values == nil {
		return fmt.Errorf("%s: RoPE table is nil or released", op)
	}
	dev, err := recorderDevice(op, rec)
	if err != nil {
		return err
	}
	if dev != table.dev {
		return fmt.Errorf("%s: the RoPE table lives on a different device from the recorder", op)
	}
	switch {
	case rows < 0 || heads < 1 || seq < 1:
		return fmt.Errorf("%s: %d rows, %d heads, %d positions per sequence: want rows >= 0 and at least one head and position", op, rows, heads, seq)
	case headDim != 2*table.HalfDim:
		return fmt.Errorf("%s: head dim %d, but the RoPE table was made for head dim %d", op, headDim, 2*table.HalfDim)
	case seq > table.Seq:
		return fmt.Errorf("%s: sequences of %d tokens, but the RoPE table covers %d positions", op, seq, table.Seq)
	case rows%seq != 0:
		return fmt.Errorf("%s: %d rows are not whole sequences of %d tokens", op, rows, seq)
	}
	if err := checkU32Elements(op, rows, heads, headDim); err != nil {
		return err
	}
	views, bases, err := bindActivationOperands(op, dev,
		frozenOperand("RoPE table", table.values, 2*table.Seq*table.HalfDim), activationOperand("x", x, rows*heads*headDim))
	if err != nil || rows == 0 {
		return err
	}
	kernel, err := dev.Kernel(ropeShader, gpu.U32("WORKGROUP_SIZE", activationWorkgroupSize))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	pairs := rows * heads * table.HalfDim
	params := gpu.PackParams(uint32(pairs), uint32(heads), uint32(table.HalfDim), uint32(seq), uint32(table.Seq),
		bases[0], bases[1], math.Float32bits(sinSign), uint32(start))
	return dispatchActivationKernel(op, gpu.KindElementwise, rec, dev, kernel, params, views, activationGroups(pairs), activationWorkgroupSize, gridLimit)
}
