package gpu

/*
#include <stdlib.h>
#include <string.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Device is an open WebGPU device with its queue and kernel cache.
type Device struct {
	inst    *Instance
	adapter C.WGPUAdapter
	h       C.WGPUDevice
	queue   C.WGPUQueue
	state   *C.sl_device_state
	Info    AdapterInfo
	Limits  Limits
	// HasTimestamps says whether GPU timestamp queries are enabled.
	HasTimestamps bool
	// HasSubgroups says whether kernels use subgroup operations: the
	// prelude's workgroup reductions then combine them (see Kernel), so
	// results differ in rounding from a device without. It needs the
	// adapter's subgroups feature, Options without NoSubgroups, and subgroups
	// formed as the reductions assume (checked when the device opens; if not,
	// SubgroupsUnused says why).
	HasSubgroups bool
	// SubgroupsUnused says why kernels do not use the adapter's subgroups
	// feature, or is empty.
	SubgroupsUnused string

	live atomic.Int64 // objects created and not yet released
	// liveBytes and peakBytes count the bytes of buffers created and not yet
	// released, and their high-water mark since the device opened or
	// ResetPeakBytes: the measured side of the memory plan.
	liveBytes, peakBytes atomic.Int64
	// allocLimit, when positive, is SetAllocationLimit's.
	allocLimit atomic.Int64

	mu      sync.Mutex
	kernels map[string]*Kernel
	unused  *Buffer // bound where a kernel variant ignores a binding
}

func (in *Instance) newDevice(a C.WGPUAdapter, info AdapterInfo, opts Options) (*Device, error) {
	var lim C.WGPULimits
	if C.sl_wgpuAdapterGetLimits(a, &lim) != 1 {
		return nil, errors.New("wgpuAdapterGetLimits failed")
	}
	lim.nextInChain = nil
	var features []C.WGPUFeatureName
	has := func(name string) bool { return slices.Contains(info.Features, name) }
	d := &Device{inst: in, adapter: a, Info: info, kernels: map[string]*Kernel{}}
	if has(featureNames[featureTimestampQuery]) {
		features = append(features, featureTimestampQuery)
		d.HasTimestamps = true
	}
	switch {
	case !has(featureNames[featureSubgroups]):
	case opts.NoSubgroups:
		d.SubgroupsUnused = "turned off"
	default:
		features = append(features, featureSubgroups)
		d.HasSubgroups = true
	}

	// Timestamps are quantized to 100 µs by default (a browser fingerprinting guard).
	enabled := cStrings(opts.Toggles)
	defer freeCStrings(enabled)
	disabled := cStrings([]string{"timestamp_quantization"})
	defer freeCStrings(disabled)
	toggles := (*C.WGPUDawnTogglesDescriptor)(C.calloc(1, C.size_t(unsafe.Sizeof(C.WGPUDawnTogglesDescriptor{}))))
	defer C.free(unsafe.Pointer(toggles))
	toggles.chain.sType = C.WGPUSType_DawnTogglesDescriptor
	toggles.enabledToggleCount = C.size_t(len(opts.Toggles))
	toggles.enabledToggles = enabled.ptr
	toggles.disabledToggleCount = 1
	toggles.disabledToggles = disabled.ptr

	desc := (*C.WGPUDeviceDescriptor)(C.calloc(1, C.size_t(unsafe.Sizeof(C.WGPUDeviceDescriptor{}))))
	defer C.free(unsafe.Pointer(desc))
	desc.nextInChain = &toggles.chain
	var feats *C.WGPUFeatureName
	if len(features) > 0 {
		feats = (*C.WGPUFeatureName)(C.calloc(C.size_t(len(features)), 4))
		defer C.free(unsafe.Pointer(feats))
		copy(unsafe.Slice(feats, len(features)), features)
	}
	desc.requiredFeatureCount = C.size_t(len(features))
	desc.requiredFeatures = feats
	climits := (*C.WGPULimits)(C.malloc(C.size_t(unsafe.Sizeof(lim))))
	defer C.free(unsafe.Pointer(climits))
	*climits = lim
	desc.requiredLimits = climits

	d.state = C.sl_device_state_new()
	in.states = append(in.states, d.state)
	r := newResult()
	f := C.sl_request_device(a, desc, d.state, r)
	if err := in.await(context.Background(), f, r, nil, nil, "device"); err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(r))
	if r.status != 1 || r.object == nil {
		return nil, fmt.Errorf("creating a device on %s (%s): %s", info.Name(), info.Backend, C.GoString(&r.message[0]))
	}
	d.h = C.WGPUDevice(r.object)
	d.queue = C.sl_wgpuDeviceGetQueue(d.h)
	var got C.WGPULimits
	C.sl_wgpuDeviceGetLimits(d.h, &got)
	d.Limits = limitsFromC(&got)
	if d.HasSubgroups {
		layout, err := d.checkSubgroupLayout(context.Background())
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("probing the subgroup layout of %s: %w", info.Name(), err)
		}
		if layout != nil {
			d.HasSubgroups = false
			d.SubgroupsUnused = "subgroups laid out otherwise than the reductions assume: " + layout.Error()
		}
	}
	return d, nil
}

type cStringArray struct {
	ptr   **C.char
	items []*C.char
}

func cStrings(ss []string) cStringArray {
	if len(ss) == 0 {
		return cStringArray{}
	}
	arr := (**C.char)(C.calloc(C.size_t(len(ss)), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
	items := unsafe.Slice(arr, len(ss))
	for i, s := range ss {
		items[i] = C.CString(s)
	}
	return cStringArray{ptr: arr, items: items}
}

func freeCStrings(a cStringArray) {
	for _, p := range a.items {
		C.free(unsafe.Pointer(p))
	}
	if a.ptr != nil {
		C.free(unsafe.Pointer(a.ptr))
	}
}

// Close destroys the device and everything cached on it.
func (d *Device) Close() {
	if d.h == nil {
		return
	}
	d.mu.Lock()
	for _, k := range d.kernels {
		k.release()
	}
	d.kernels = nil
	d.unused.Release()
	d.unused = nil
	d.mu.Unlock()
	C.sl_wgpuQueueRelease(d.queue)
	C.sl_wgpuDeviceDestroy(d.h)
	// Destroying the device completes its pending maps and work-done requests;
	// waiting on them fires their callbacks, after which the state of the calls
	// that cancelled waits abandoned can be freed.
	d.inst.reap(d, time.Second)
	C.sl_wgpuDeviceRelease(d.h)
	C.sl_wgpuAdapterRelease(d.adapter)
	C.sl_wgpuInstanceProcessEvents(d.inst.h)
	d.h = nil
}

// LiveObjects counts buffers, pipelines and bind groups created through this
// device and not yet released: a leak check for tests.
func (d *Device) LiveObjects() int64 { return d.live.Load() }

// LiveBytes is the size of the buffers created on this device and not yet
// released: every tensor, staging, uniform and read-back buffer.
func (d *Device) LiveBytes() int64 { return d.liveBytes.Load() }

// PeakBytes is the most LiveBytes has been since the device opened or the
// last ResetPeakBytes.
func (d *Device) PeakBytes() int64 { return d.peakBytes.Load() }

// ResetPeakBytes restarts the high-water mark at the bytes live now.
func (d *Device) ResetPeakBytes() { d.peakBytes.Store(d.liveBytes.Load()) }

// SetAllocationLimit makes the device act as one with limit bytes of memory
// (0: no limit): a buffer that would take LiveBytes above it is not created,
// and its creation fails with the out-of-memory Error Dawn reports when a
// device runs out. Tests use it to run out of memory mid-run on purpose.
func (d *Device) SetAllocationLimit(limit int64) { d.allocLimit.Store(limit) }

func (d *Device) addLiveBytes(n int64) {
	now := d.liveBytes.Add(n)
	for {
		peak := d.peakBytes.Load()
		if now <= peak || d.peakBytes.CompareAndSwap(peak, now) {
			return
		}
	}
}

// Err returns the first uncaptured WebGPU error or the device loss since the last
// call, as a Go error, or nil.
func (d *Device) Err() error {
	var msg [4096]C.char
	if reason := C.sl_device_lost(d.state, &msg[0], C.size_t(len(msg))); reason != 0 && d.h != nil {
		return fmt.Errorf("WebGPU device lost (reason %d): %s", uint32(reason), C.GoString(&msg[0]))
	}
	if t := C.sl_device_take_error(d.state, &msg[0], C.size_t(len(msg))); t != 0 {
		return &Error{Type: errorTypeName(uint32(t)), Message: C.GoString(&msg[0])}
	}
	return nil
}

// Error is a WebGPU validation, out-of-memory or internal error.
type Error struct {
	Type    string
	Message string
}

func (e *Error) Error() string { return "WebGPU " + e.Type + " error: " + e.Message }

func errorTypeName(t uint32) string {
	switch t {
	case 2:
		return "validation"
	case 3:
		return "out-of-memory"
	case 4:
		return "internal"
	}
	return "unknown"
}

// Buffer usages (WGPUBufferUsage bits).
const (
	usageMapRead      = 0x1
	usageCopySrc      = 0x4
	usageCopyDst      = 0x8
	usageUniform      = 0x40
	usageStorage      = 0x80
	usageIndirect     = 0x100
	usageQueryResolve = 0x200
)

// Buffer is a GPU buffer. Storage buffers can be bound to kernels, copied and
// used for indirect dispatch.
type Buffer struct {
	dev  *Device
	h    C.WGPUBuffer
	size uint64
}

// Size is the buffer's size in bytes.
func (b *Buffer) Size() uint64 { return b.size }

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

func (d *Device) createBuffer(size uint64, usage uint64, label string) (*Buffer, error) {
	size = max(align4(size), 4)
	if size > d.Limits.MaxBufferSize {
		return nil, fmt.Errorf("buffer %q of %d bytes exceeds the adapter's maxBufferSize %d", label, size, d.Limits.MaxBufferSize)
	}
	if limit := d.allocLimit.Load(); limit > 0 && d.liveBytes.Load()+int64(size) > limit {
		return nil, fmt.Errorf("creating buffer %s: %w", label, &Error{Type: "out-of-memory",
			Message: fmt.Sprintf("%d more bytes would exceed the device's allocation limit of %d bytes (SetAllocationLimit)", size, limit)})
	}
	var desc C.WGPUBufferDescriptor
	clabel := C.CString(label)
	defer C.free(unsafe.Pointer(clabel))
	desc.label = C.WGPUStringView{data: clabel, length: C.size_t(len(label))}
	desc.usage = C.WGPUBufferUsage(usage)
	desc.size = C.uint64_t(size)
	runtime.LockOSThread() // error scopes are per OS thread (see CompileKernel)
	defer runtime.UnlockOSThread()
	C.sl_wgpuDevicePushErrorScope(d.h, 2) // OutOfMemory
	h := C.sl_wgpuDeviceCreateBuffer(d.h, &desc)
	if err := d.popErrorScope("creating buffer " + label); err != nil {
		if h != nil {
			C.sl_wgpuBufferRelease(h)
		}
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("creating buffer %q of %d bytes failed", label, size)
	}
	d.live.Add(1)
	d.addLiveBytes(int64(size))
	return &Buffer{dev: d, h: h, size: size}, nil
}

// NewBuffer creates a zero-filled storage buffer of at least size bytes.
func (d *Device) NewBuffer(size uint64, label string) (*Buffer, error) {
	return d.createBuffer(size, usageStorage|usageCopySrc|usageCopyDst|usageIndirect, label)
}

// Release frees the buffer. Releasing twice is harmless.
func (b *Buffer) Release() {
	if b == nil || b.h == nil {
		return
	}
	C.sl_wgpuBufferDestroy(b.h)
	C.sl_wgpuBufferRelease(b.h)
	b.h = nil
	b.dev.live.Add(-1)
	b.dev.addLiveBytes(-int64(b.size))
}

// Write copies data into the buffer at offset (both multiples of 4 bytes).
func (b *Buffer) Write(offset uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if offset%4 != 0 || len(data)%4 != 0 {
		return fmt.Errorf("buffer write at %d of %d bytes: offset and size must be multiples of 4", offset, len(data))
	}
	if offset+uint64(len(data)) > b.size {
		return fmt.Errorf("buffer write of %d bytes at %d overruns the %d-byte buffer", len(data), offset, b.size)
	}
	C.sl_wgpuQueueWriteBuffer(b.dev.queue, b.h, C.uint64_t(offset), unsafe.Pointer(&data[0]), C.size_t(len(data)))
	return b.dev.Err()
}

// Read copies size bytes at offset out of the buffer, waiting for all submitted
// work first. When ctx ends first it returns ctx's error; the abandoned read's
// staging buffer lives on (and counts in LiveObjects) until its map callback
// has fired, which a later wait on the device, or its Close, sees to.
func (b *Buffer) Read(ctx context.Context, offset, size uint64) ([]byte, error) {
	d := b.dev
	if offset%4 != 0 || size%4 != 0 {
		return nil, fmt.Errorf("buffer read at %d of %d bytes: offset and size must be multiples of 4", offset, size)
	}
	if offset+size > b.size {
		return nil, fmt.Errorf("buffer read of %d bytes at %d overruns the %d-byte buffer", size, offset, b.size)
	}
	if size == 0 {
		return nil, nil
	}
	staging, err := d.createBuffer(size, usageMapRead|usageCopyDst, "readback")
	if err != nil {
		return nil, err
	}
	enc := C.sl_wgpuDeviceCreateCommandEncoder(d.h, nil)
	C.sl_wgpuCommandEncoderCopyBufferToBuffer(enc, b.h, C.uint64_t(offset), staging.h, 0, C.uint64_t(size))
	if err := d.finishAndSubmit(enc); err != nil {
		staging.Release()
		return nil, err
	}
	r := newResult()
	f := C.sl_map_read(staging.h, 0, C.size_t(size), r)
	if err := d.inst.await(ctx, f, r, d, staging, "buffer read-back"); err != nil {
		return nil, err // r and staging now wait for the callback in d.inst
	}
	defer C.free(unsafe.Pointer(r))
	defer staging.Release()
	if r.status != 1 {
		if err := d.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("mapping read-back buffer: %s", C.GoString(&r.message[0]))
	}
	p := C.sl_wgpuBufferGetConstMappedRange(staging.h, 0, C.size_t(size))
	if p == nil {
		return nil, errors.New("wgpuBufferGetConstMappedRange returned NULL")
	}
	out := C.GoBytes(p, C.int(size))
	C.sl_wgpuBufferUnmap(staging.h)
	return out, d.Err()
}

func (d *Device) finishAndSubmit(enc C.WGPUCommandEncoder) error {
	cmd := C.sl_wgpuCommandEncoderFinish(enc, nil)
	C.sl_wgpuCommandEncoderRelease(enc)
	if cmd == nil {
		return errors.Join(errors.New("finishing command encoder failed"), d.Err())
	}
	C.sl_wgpuQueueSubmit(d.queue, 1, &cmd)
	C.sl_wgpuCommandBufferRelease(cmd)
	return d.Err()
}

// Sync waits until the GPU has finished all submitted work, or until ctx ends,
// which returns ctx's error.
func (d *Device) Sync(ctx context.Context) error {
	r := newResult()
	f := C.sl_work_done(d.queue, r)
	if err := d.inst.await(ctx, f, r, d, nil, "queue"); err != nil {
		return err // r now waits for the callback in d.inst
	}
	defer C.free(unsafe.Pointer(r))
	if err := d.Err(); err != nil {
		return err
	}
	if r.status != 1 { // Success
		return fmt.Errorf("waiting for the queue: status %d: %s", uint32(r.status), C.GoString(&r.message[0]))
	}
	return nil
}

// popErrorScope pops the innermost error scope and returns its error, if any.
func (d *Device) popErrorScope(what string) error {
	r := newResult()
	f := C.sl_pop_error_scope(d.h, r)
	if err := d.inst.await(context.Background(), f, r, d, nil, "error scope"); err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(r))
	if r.status == 1 && r._type != 1 && r._type != 0 { // 1 = NoError
		return fmt.Errorf("%s: %w", what, &Error{Type: errorTypeName(uint32(r._type)), Message: C.GoString(&r.message[0])})
	}
	return nil
}
