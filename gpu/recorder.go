package gpu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"
)

// Binding is a range of a buffer bound to one kernel binding. Size 0 means "to
// the end of the buffer".
type Binding struct {
	Buffer *Buffer
	Offset uint64
	Size   uint64
}

// Bind binds a whole buffer.
func Bind(b *Buffer) Binding { return Binding{Buffer: b} }

const uniformChunkSize = 64 << 10

type uniformChunk struct {
	buf  *Buffer
	host []byte
	used uint64
}

// Recorder records dispatches, copies and clears into one command encoder and
// submits them as a single queue submission. Kernel parameters (binding 0, a
// uniform struct) are packed into shared uniform buffers and uploaded with one
// write per 64 KiB at Submit. A Recorder can be reused after Submit; Release it
// when done.
type Recorder struct {
	dev    *Device
	enc    C.WGPUCommandEncoder
	pass   C.WGPUComputePassEncoder
	groups []C.WGPUBindGroup
	chunks []*uniformChunk
	slot   uint64

	// scratchBuf holds small GPU-written values of one submission (indirect
	// dispatch grids); scratchUsed is reset by Submit.
	scratchBuf  *Buffer
	scratchUsed uint64

	// Timed puts GPU timestamps around every compute pass (when the adapter
	// supports them); PassTimes returns the durations after Submit.
	Timed     bool
	querySet  C.WGPUQuerySet
	queryCap  int
	passCount int
	resolve   *Buffer
	timed     int // passes with timestamps in the last submission

	// Dispatches counts dispatches recorded since the last Submit.
	Dispatches int
	// Log, when set, is called for every dispatch: tests use it to check which
	// work a step really issues.
	Log func(Dispatch)
	// gemm describes the next dispatch when Gemm records it.
	gemm *GemmWork
}

// Dispatch describes one recorded dispatch. An indirect dispatch has a zero
// Groups and its grid in Indirect (three u32, valid from Submit until the
// recorder records again).
type Dispatch struct {
	// Kind is what the dispatch computes; Kernel names the compiled kernel
	// (its cache key) for messages.
	Kind     Kind
	Kernel   string
	Groups   [3]uint32
	Indirect *Binding
	// Gemm is the GEMM a dispatch of a GEMM kind computes (nil for other
	// kinds), so that the work a step issues can be counted.
	Gemm *GemmWork
}

// NewRecorder creates a recorder.
func (d *Device) NewRecorder() *Recorder {
	align := uint64(max(d.Limits.MinUniformBufferOffsetAlignment, 256))
	return &Recorder{dev: d, slot: align}
}

// Device is the device the recorder records for.
func (r *Recorder) Device() *Device { return r.dev }

func (r *Recorder) encoder() C.WGPUCommandEncoder {
	if r.enc == nil {
		r.enc = C.sl_wgpuDeviceCreateCommandEncoder(r.dev.h, nil)
	}
	return r.enc
}

const maxTimedPasses = 2048

func (r *Recorder) beginPass() error {
	if r.pass != nil {
		return nil
	}
	enc := r.encoder()
	var desc C.WGPUComputePassDescriptor
	var tw *C.WGPUPassTimestampWrites
	if r.Timed && r.dev.HasTimestamps {
		if r.passCount >= maxTimedPasses {
			return fmt.Errorf("more than %d timed passes in one submission", maxTimedPasses)
		}
		if r.querySet == nil {
			var qd C.WGPUQuerySetDescriptor
			qd._type = 2 // Timestamp
			qd.count = C.uint32_t(2 * maxTimedPasses)
			r.querySet = C.sl_wgpuDeviceCreateQuerySet(r.dev.h, &qd)
			r.queryCap = 2 * maxTimedPasses
		}
		tw = (*C.WGPUPassTimestampWrites)(C.calloc(1, C.size_t(unsafe.Sizeof(C.WGPUPassTimestampWrites{}))))
		defer C.free(unsafe.Pointer(tw))
		tw.querySet = r.querySet
		tw.beginningOfPassWriteIndex = C.uint32_t(2 * r.passCount)
		tw.endOfPassWriteIndex = C.uint32_t(2*r.passCount + 1)
		desc.timestampWrites = tw
		r.passCount++
	}
	r.pass = C.sl_wgpuCommandEncoderBeginComputePass(enc, &desc)
	return nil
}

// EndPass closes the current compute pass; the next dispatch opens a new one.
// With Timed, each pass is timed separately.
func (r *Recorder) EndPass() {
	if r.pass != nil {
		C.sl_wgpuComputePassEncoderEnd(r.pass)
		C.sl_wgpuComputePassEncoderRelease(r.pass)
		r.pass = nil
	}
}

// uniform stores params in a uniform slot and returns its binding.
func (r *Recorder) uniform(params []byte) (Binding, error) {
	size := (uint64(len(params)) + 15) &^ 15
	if size > r.slot {
		return Binding{}, fmt.Errorf("kernel parameters of %d bytes exceed the %d-byte slot", len(params), r.slot)
	}
	var c *uniformChunk
	for _, ch := range r.chunks {
		if ch.used+r.slot <= uniformChunkSize {
			c = ch
			break
		}
	}
	if c == nil {
		buf, err := r.dev.createBuffer(uniformChunkSize, usageUniform|usageCopyDst, "kernel parameters")
		if err != nil {
			return Binding{}, err
		}
		c = &uniformChunk{buf: buf, host: make([]byte, uniformChunkSize)}
		r.chunks = append(r.chunks, c)
	}
	off := c.used
	copy(c.host[off:], params)
	c.used += r.slot
	return Binding{Buffer: c.buf, Offset: off, Size: size}, nil
}

func (r *Recorder) bindGroup(k *Kernel, params []byte, bindings []Binding) (C.WGPUBindGroup, error) {
	n := len(bindings)
	if params != nil {
		n++
	}
	entries := (*C.WGPUBindGroupEntry)(C.calloc(C.size_t(max(n, 1)), C.size_t(unsafe.Sizeof(C.WGPUBindGroupEntry{}))))
	defer C.free(unsafe.Pointer(entries))
	es := unsafe.Slice(entries, n)
	i := 0
	set := func(binding uint32, b Binding) error {
		if b.Buffer == nil || b.Buffer.h == nil {
			return fmt.Errorf("kernel %s: binding %d has no buffer", k.Name, binding)
		}
		size := b.Size
		if size == 0 {
			size = b.Buffer.size - b.Offset
		}
		es[i].binding = C.uint32_t(binding)
		es[i].buffer = b.Buffer.h
		es[i].offset = C.uint64_t(b.Offset)
		es[i].size = C.uint64_t(size)
		i++
		return nil
	}
	if params != nil {
		u, err := r.uniform(params)
		if err != nil {
			return nil, err
		}
		if err := set(0, u); err != nil {
			return nil, err
		}
	}
	for j, b := range bindings {
		if b.Buffer != nil && b.Size == 0 && b.Buffer.size-b.Offset > r.dev.Limits.MaxStorageBufferBindingSize ||
			b.Size > r.dev.Limits.MaxStorageBufferBindingSize {
			return nil, fmt.Errorf("kernel %s: binding %d spans %d bytes, over the adapter's maxStorageBufferBindingSize %d",
				k.Name, j+1, max(b.Size, b.Buffer.size-b.Offset), r.dev.Limits.MaxStorageBufferBindingSize)
		}
		if err := set(uint32(j+1), b); err != nil {
			return nil, err
		}
	}
	var desc C.WGPUBindGroupDescriptor
	desc.layout = k.layout
	desc.entryCount = C.size_t(n)
	desc.entries = entries
	g := C.sl_wgpuDeviceCreateBindGroup(r.dev.h, &desc)
	if g == nil {
		return nil, fmt.Errorf("kernel %s: creating bind group failed", k.Name)
	}
	r.dev.live.Add(1)
	r.groups = append(r.groups, g)
	return g, nil
}

const scratchSize = 64 << 10

// scratch reserves size bytes (16-byte aligned) of GPU scratch memory for this
// submission.
func (r *Recorder) scratch(size uint64) (Binding, error) {
	size = (size + 15) &^ 15
	if r.scratchBuf == nil {
		b, err := r.dev.NewBuffer(scratchSize, "recorder scratch")
		if err != nil {
			return Binding{}, err
		}
		r.scratchBuf = b
	}
	if r.scratchUsed+size > scratchSize {
		return Binding{}, fmt.Errorf("recorder scratch space (%d bytes) exhausted: submit more often", scratchSize)
	}
	b := Binding{Buffer: r.scratchBuf, Offset: r.scratchUsed, Size: size}
	r.scratchUsed += size
	return b, nil
}

// Dispatch records kernel k, computing what kind says, over a grid of
// workgroups. params (may be nil; see PackParams) is bound at binding 0 as a
// uniform; bindings follow at 1, 2, ...
func (r *Recorder) Dispatch(kind Kind, k *Kernel, params []byte, bindings []Binding, x, y, z uint32) error {
	if err := checkKind(kind, k, r.gemm); err != nil {
		return err
	}
	if x == 0 || y == 0 || z == 0 {
		return nil
	}
	maxGroups := r.dev.Limits.MaxComputeWorkgroupsPerDimension
	if x > maxGroups || y > maxGroups || z > maxGroups {
		return fmt.Errorf("kernel %s: grid %dx%dx%d exceeds maxComputeWorkgroupsPerDimension %d", k.Name, x, y, z, maxGroups)
	}
	if err := r.setKernel(k, params, bindings); err != nil {
		return err
	}
	C.sl_wgpuComputePassEncoderDispatchWorkgroups(r.pass, C.uint32_t(x), C.uint32_t(y), C.uint32_t(z))
	r.logged(Dispatch{Kind: kind, Kernel: k.Name, Groups: [3]uint32{x, y, z}})
	return nil
}

// setKernel binds k and its resources in the current (or a new) compute pass.
func (r *Recorder) setKernel(k *Kernel, params []byte, bindings []Binding) error {
	g, err := r.bindGroup(k, params, bindings)
	if err != nil {
		return err
	}
	if err := r.beginPass(); err != nil {
		return err
	}
	C.sl_wgpuComputePassEncoderSetPipeline(r.pass, k.pipeline)
	C.sl_wgpuComputePassEncoderSetBindGroup(r.pass, 0, g, 0, nil)
	return nil
}

// checkKind checks that a dispatch of k has a kind, and a GEMM kind exactly
// when Gemm describes its work.
func checkKind(kind Kind, k *Kernel, gemm *GemmWork) error {
	if kind == 0 || int(kind) >= len(kindNames) {
		return fmt.Errorf("kernel %s: dispatch of unknown kind %d", k.Name, kind)
	}
	if kind.IsGemm() != (gemm != nil) {
		return fmt.Errorf("kernel %s: a %s dispatch must be recorded by Gemm, and Gemm's only", k.Name, kind)
	}
	return nil
}

func (r *Recorder) logged(d Dispatch) {
	d.Gemm, r.gemm = r.gemm, nil
	r.Dispatches++
	if r.Log != nil {
		r.Log(d)
	}
}

// DispatchIndirect records kernel k, computing what kind says, with its grid
// read on the GPU from three u32 at args.Offset: sizes computed on the device
// never visit the host.
func (r *Recorder) DispatchIndirect(kind Kind, k *Kernel, params []byte, bindings []Binding, args Binding) error {
	if err := checkKind(kind, k, r.gemm); err != nil {
		return err
	}
	if err := r.setKernel(k, params, bindings); err != nil {
		return err
	}
	C.sl_wgpuComputePassEncoderDispatchWorkgroupsIndirect(r.pass, args.Buffer.h, C.uint64_t(args.Offset))
	r.logged(Dispatch{Kind: kind, Kernel: k.Name, Indirect: &args})
	return nil
}

// Copy records a buffer-to-buffer copy (offsets and size multiples of 4).
func (r *Recorder) Copy(dst *Buffer, dstOff uint64, src *Buffer, srcOff uint64, size uint64) {
	r.EndPass()
	C.sl_wgpuCommandEncoderCopyBufferToBuffer(r.encoder(), src.h, C.uint64_t(srcOff), dst.h, C.uint64_t(dstOff), C.uint64_t(size))
}

// Clear records zero-filling size bytes of b at offset (multiples of 4).
func (r *Recorder) Clear(b *Buffer, offset, size uint64) {
	r.EndPass()
	C.sl_wgpuCommandEncoderClearBuffer(r.encoder(), b.h, C.uint64_t(offset), C.uint64_t(size))
}

// Submit ends recording, uploads the kernel parameters and submits everything as
// one queue submission. It does not wait for the GPU; use Device.Sync or a read.
func (r *Recorder) Submit() error {
	r.EndPass()
	if r.enc == nil {
		return nil
	}
	r.timed = r.passCount
	if r.passCount > 0 {
		if r.resolve == nil {
			var err error
			r.resolve, err = r.dev.createBuffer(uint64(8*r.queryCap), usageQueryResolve|usageCopySrc, "timestamps")
			if err != nil {
				return err
			}
		}
		C.sl_wgpuCommandEncoderResolveQuerySet(r.enc, r.querySet, 0, C.uint32_t(2*r.passCount), r.resolve.h, 0)
	}
	for _, c := range r.chunks {
		if c.used > 0 {
			C.sl_wgpuQueueWriteBuffer(r.dev.queue, c.buf.h, 0, unsafe.Pointer(&c.host[0]), C.size_t(c.used))
			c.used = 0
		}
	}
	enc := r.enc
	r.enc = nil
	err := r.dev.finishAndSubmit(enc)
	for _, g := range r.groups {
		C.sl_wgpuBindGroupRelease(g)
		r.dev.live.Add(-1)
	}
	r.groups = r.groups[:0]
	r.passCount = 0
	r.Dispatches = 0
	r.scratchUsed = 0
	return err
}

// PassTimes returns the GPU time of each pass of the last submission, waiting for
// it to finish. It needs Timed and timestamp support.
func (r *Recorder) PassTimes(ctx context.Context) ([]time.Duration, error) {
	if !r.dev.HasTimestamps {
		return nil, errors.New("the adapter has no timestamp queries")
	}
	if r.timed == 0 || r.resolve == nil {
		return nil, errors.New("no timed passes were submitted")
	}
	// The resolve buffer is not a storage buffer; copy it out through a staging read.
	raw, err := r.resolve.Read(ctx, 0, uint64(16*r.timed))
	if err != nil {
		return nil, err
	}
	out := make([]time.Duration, r.timed)
	for i := range out {
		begin := binary.LittleEndian.Uint64(raw[16*i:])
		end := binary.LittleEndian.Uint64(raw[16*i+8:])
		out[i] = time.Duration(end - begin)
	}
	return out, nil
}

// Release frees the recorder's buffers and any unsubmitted work.
func (r *Recorder) Release() {
	r.EndPass()
	if r.enc != nil {
		C.sl_wgpuCommandEncoderRelease(r.enc)
		r.enc = nil
	}
	for _, g := range r.groups {
		C.sl_wgpuBindGroupRelease(g)
		r.dev.live.Add(-1)
	}
	r.groups = nil
	for _, c := range r.chunks {
		c.buf.Release()
	}
	r.chunks = nil
	if r.querySet != nil {
		C.sl_wgpuQuerySetDestroy(r.querySet)
		C.sl_wgpuQuerySetRelease(r.querySet)
		r.querySet = nil
	}
	r.resolve.Release()
	r.resolve = nil
	r.scratchBuf.Release()
	r.scratchBuf = nil
}
