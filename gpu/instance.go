package gpu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Backend is a WebGPU backend type (WGPUBackendType).
type Backend uint32

// Backends, with the ABI's values.
const (
	BackendUndefined Backend = 0
	BackendNull      Backend = 1
	BackendWebGPU    Backend = 2
	BackendD3D11     Backend = 3
	BackendD3D12     Backend = 4
	BackendMetal     Backend = 5
	BackendVulkan    Backend = 6
	BackendOpenGL    Backend = 7
	BackendOpenGLES  Backend = 8
)

var backendNames = map[Backend]string{
	BackendUndefined: "default", BackendNull: "Null", BackendWebGPU: "WebGPU", BackendD3D11: "D3D11",
	BackendD3D12: "D3D12", BackendMetal: "Metal", BackendVulkan: "Vulkan", BackendOpenGL: "OpenGL",
	BackendOpenGLES: "OpenGLES",
}

func (b Backend) String() string {
	if s, ok := backendNames[b]; ok {
		return s
	}
	return fmt.Sprintf("Backend(%d)", uint32(b))
}

// ParseBackend accepts a backend name as printed by String, case-insensitively.
func ParseBackend(s string) (Backend, error) {
	for b, name := range backendNames {
		if strings.EqualFold(s, name) {
			return b, nil
		}
	}
	return 0, fmt.Errorf("unknown backend %q (want vulkan, metal, d3d12, d3d11, opengl, opengles)", s)
}

// AdapterType says what kind of processor an adapter is.
type AdapterType uint32

// AdapterTypeCPU is a CPU driver such as lavapipe.
const AdapterTypeCPU AdapterType = 3

func (t AdapterType) String() string {
	switch t {
	case 1:
		return "discrete GPU"
	case 2:
		return "integrated GPU"
	case 3:
		return "CPU"
	}
	return "unknown"
}

// PowerPreference steers adapter choice on machines with several GPUs.
type PowerPreference uint32

// Power preferences, with the ABI's values.
const (
	PowerDefault         PowerPreference = 0
	PowerLow             PowerPreference = 1
	PowerHighPerformance PowerPreference = 2
)

// Feature names (WGPUFeatureName) that sparselora looks for.
const (
	featureTimestampQuery = 0x3
	featureShaderF16      = 0xA
	featureSubgroups      = 0x11
	featureSubgroupMatrix = 0x50038
)

var featureNames = map[uint32]string{
	0x1: "depth-clip-control", 0x2: "depth32float-stencil8", featureTimestampQuery: "timestamp-query",
	0x4: "texture-compression-bc", 0x5: "texture-compression-bc-sliced-3d", 0x6: "texture-compression-etc2",
	0x7: "texture-compression-astc", 0x8: "texture-compression-astc-sliced-3d", 0x9: "indirect-first-instance",
	featureShaderF16: "shader-f16", 0xB: "rg11b10ufloat-renderable", 0xC: "bgra8unorm-storage",
	0xD: "float32-filterable", 0xE: "float32-blendable", 0xF: "clip-distances", 0x10: "dual-source-blending",
	featureSubgroups: "subgroups", 0x12: "core-features-and-limits",
	featureSubgroupMatrix: "chromium-experimental-subgroup-matrix",
}

// Limits are the adapter or device limits sparselora cares about.
type Limits struct {
	MaxBufferSize                     uint64 `json:"maxBufferSize"`
	MaxStorageBufferBindingSize       uint64 `json:"maxStorageBufferBindingSize"`
	MaxUniformBufferBindingSize       uint64 `json:"maxUniformBufferBindingSize"`
	MaxStorageBuffersPerShaderStage   uint32 `json:"maxStorageBuffersPerShaderStage"`
	MaxComputeWorkgroupStorageSize    uint32 `json:"maxComputeWorkgroupStorageSize"`
	MaxComputeInvocationsPerWorkgroup uint32 `json:"maxComputeInvocationsPerWorkgroup"`
	MaxComputeWorkgroupSizeX          uint32 `json:"maxComputeWorkgroupSizeX"`
	MaxComputeWorkgroupSizeY          uint32 `json:"maxComputeWorkgroupSizeY"`
	MaxComputeWorkgroupsPerDimension  uint32 `json:"maxComputeWorkgroupsPerDimension"`
	MinUniformBufferOffsetAlignment   uint32 `json:"minUniformBufferOffsetAlignment"`
	MinStorageBufferOffsetAlignment   uint32 `json:"minStorageBufferOffsetAlignment"`
}

func limitsFromC(l *C.WGPULimits) Limits {
	return Limits{
		MaxBufferSize:                     uint64(l.maxBufferSize),
		MaxStorageBufferBindingSize:       uint64(l.maxStorageBufferBindingSize),
		MaxUniformBufferBindingSize:       uint64(l.maxUniformBufferBindingSize),
		MaxStorageBuffersPerShaderStage:   uint32(l.maxStorageBuffersPerShaderStage),
		MaxComputeWorkgroupStorageSize:    uint32(l.maxComputeWorkgroupStorageSize),
		MaxComputeInvocationsPerWorkgroup: uint32(l.maxComputeInvocationsPerWorkgroup),
		MaxComputeWorkgroupSizeX:          uint32(l.maxComputeWorkgroupSizeX),
		MaxComputeWorkgroupSizeY:          uint32(l.maxComputeWorkgroupSizeY),
		MaxComputeWorkgroupsPerDimension:  uint32(l.maxComputeWorkgroupsPerDimension),
		MinUniformBufferOffsetAlignment:   uint32(l.minUniformBufferOffsetAlignment),
		MinStorageBufferOffsetAlignment:   uint32(l.minStorageBufferOffsetAlignment),
	}
}

// AdapterInfo describes one adapter as the implementation reports it.
type AdapterInfo struct {
	Index        int         `json:"index"`
	Vendor       string      `json:"vendor"`
	Architecture string      `json:"architecture"`
	Device       string      `json:"device"`
	Description  string      `json:"driver"`
	Backend      Backend     `json:"-"`
	BackendName  string      `json:"backend"`
	Type         AdapterType `json:"-"`
	TypeName     string      `json:"type"`
	VendorID     uint32      `json:"vendorID"`
	DeviceID     uint32      `json:"deviceID"`
	SubgroupMin  uint32      `json:"subgroupMinSize"`
	SubgroupMax  uint32      `json:"subgroupMaxSize"`
	Features     []string    `json:"features"`
	Limits       Limits      `json:"limits"`
	// MemoryBytes is the adapter's largest device-local memory heap as Dawn
	// reports it (for a CPU or unified-memory adapter: system memory); 0
	// where the implementation reports none.
	MemoryBytes uint64 `json:"memoryBytes,omitempty"`
}

// Name is the adapter's human-readable name: its device string, or vendor and IDs.
func (a AdapterInfo) Name() string {
	if a.Device != "" {
		return a.Device
	}
	return fmt.Sprintf("%s %04x:%04x", a.Vendor, a.VendorID, a.DeviceID)
}

func goString(v C.WGPUStringView) string {
	if v.data == nil {
		return ""
	}
	if v.length == C.SL_WGPU_STRLEN {
		return C.GoString(v.data)
	}
	return C.GoStringN(v.data, C.int(v.length))
}

// Instance is an open WebGPU instance. Close releases it.
type Instance struct {
	h       C.WGPUInstance
	libPath string
	states  []*C.sl_device_state // freed with the instance: loss callbacks may run until then

	mu sync.Mutex
	// orphans are asynchronous calls whose wait gave up (the context ended)
	// before their callbacks fired. Dawn still writes into their results, and a
	// pending map still uses its staging buffer, so both are freed only once the
	// callback has fired: polled by later waits, and at Device.Close and Close.
	orphans []*orphan
}

// orphan is the state of an abandoned asynchronous call.
type orphan struct {
	future  C.WGPUFuture
	result  *C.sl_result
	dev     *Device // the device the call was made on, or nil
	staging *Buffer // a cancelled read's mapped buffer, or nil
}

func (o *orphan) free() {
	o.staging.Release()
	C.free(unsafe.Pointer(o.result))
}

// NewInstance loads the WebGPU library (once per process) and creates an instance
// that supports timed waits.
func NewInstance() (*Instance, error) {
	path, err := loadLibrary()
	if err != nil {
		return nil, err
	}
	if os.Getenv("XDG_RUNTIME_DIR") == "" {
		// Dawn's Vulkan loader warns on every start without it.
		_ = os.Setenv("XDG_RUNTIME_DIR", os.TempDir())
	}
	var desc C.WGPUInstanceDescriptor
	desc.capabilities.timedWaitAnyEnable = 1
	desc.capabilities.timedWaitAnyMaxCount = 1
	h := C.sl_wgpuCreateInstance(&desc)
	if h == nil {
		return nil, fmt.Errorf("wgpuCreateInstance failed (library %s)", path)
	}
	return &Instance{h: h, libPath: path}, nil
}

// LibraryPath is the file the WebGPU implementation was loaded from.
func (in *Instance) LibraryPath() string { return in.libPath }

// Close releases the instance. Devices opened from it must be closed first.
func (in *Instance) Close() {
	if in.h == nil {
		return
	}
	C.sl_wgpuInstanceProcessEvents(in.h)
	in.reap(nil, 0)
	C.sl_wgpuInstanceRelease(in.h)
	in.h = nil
	// Calls still pending (their device was left open) get their callbacks when
	// the instance is destroyed, which their staging buffers may delay: release
	// those first, and free the results only after.
	in.mu.Lock()
	for _, o := range in.orphans {
		o.staging.Release()
	}
	for _, o := range in.orphans {
		C.free(unsafe.Pointer(o.result))
	}
	in.orphans = nil
	in.mu.Unlock()
	for _, s := range in.states {
		C.sl_device_state_free(s)
	}
	in.states = nil
}

// await waits for future f, whose callback fills r, made on dev (nil for an
// instance-level call) and, for a map, on staging. On success the caller keeps
// r and staging. On failure (the context ended, or the wait failed) the callback
// may still fire later: r and staging then belong to the instance, which frees
// them once it has, and the caller must not touch them again.
func (in *Instance) await(ctx context.Context, f C.WGPUFuture, r *C.sl_result, dev *Device, staging *Buffer, what string) error {
	if err := in.wait(ctx, f, what); err != nil {
		in.mu.Lock()
		in.orphans = append(in.orphans, &orphan{future: f, result: r, dev: dev, staging: staging})
		in.mu.Unlock()
		return err
	}
	in.reap(nil, 0)
	return nil
}

// reap frees the orphans whose callbacks have fired, first polling each pending
// one of dev (or of any device when dev is nil) for up to timeout so that a
// completed call's callback fires (WaitAnyOnly callbacks fire only in a wait).
func (in *Instance) reap(dev *Device, timeout time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.orphans) == 0 {
		return
	}
	kept := in.orphans[:0]
	for _, o := range in.orphans {
		if C.sl_result_done(o.result) == 0 && (dev == nil || o.dev == dev) && in.h != nil {
			C.sl_wait(in.h, o.future, C.uint64_t(timeout))
		}
		if C.sl_result_done(o.result) != 0 {
			o.free()
			continue
		}
		kept = append(kept, o)
	}
	clear(in.orphans[len(kept):])
	in.orphans = kept
}

// wait blocks until future f completes or the context ends. A context that has
// already ended returns before polling, so the future may well be complete yet
// its callback not fired: callers hand its state to await's orphans.
func (in *Instance) wait(ctx context.Context, f C.WGPUFuture, what string) error {
	const slice = uint64(200 * time.Millisecond)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		switch st := C.sl_wait(in.h, f, C.uint64_t(slice)); st {
		case 1: // Success
			return nil
		case 2: // TimedOut
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		default:
			return fmt.Errorf("waiting for %s: wgpuInstanceWaitAny returned status %d", what, uint32(st))
		}
	}
}

func newResult() *C.sl_result {
	return (*C.sl_result)(C.calloc(1, C.size_t(unsafe.Sizeof(C.sl_result{}))))
}

func (in *Instance) requestAdapter(backend Backend, power PowerPreference, fallback bool) (C.WGPUAdapter, error) {
	var opts C.WGPURequestAdapterOptions
	opts.featureLevel = 2 // Core
	opts.powerPreference = C.WGPUPowerPreference(power)
	opts.backendType = C.WGPUBackendType(backend)
	if fallback {
		opts.forceFallbackAdapter = 1
	}
	r := newResult()
	f := C.sl_request_adapter(in.h, &opts, r)
	if err := in.await(context.Background(), f, r, nil, nil, "adapter"); err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(r))
	if r.status != 1 || r.object == nil {
		return nil, fmt.Errorf("no %s adapter: %s", backend, C.GoString(&r.message[0]))
	}
	return C.WGPUAdapter(r.object), nil
}

func adapterInfo(a C.WGPUAdapter) AdapterInfo {
	var info C.WGPUAdapterInfo
	C.sl_wgpuAdapterGetInfo(a, &info)
	out := AdapterInfo{
		Vendor:       goString(info.vendor),
		Architecture: goString(info.architecture),
		Device:       goString(info.device),
		Description:  goString(info.description),
		Backend:      Backend(info.backendType),
		Type:         AdapterType(info.adapterType),
		VendorID:     uint32(info.vendorID),
		DeviceID:     uint32(info.deviceID),
		SubgroupMin:  uint32(info.subgroupMinSize),
		SubgroupMax:  uint32(info.subgroupMaxSize),
	}
	C.sl_wgpuAdapterInfoFreeMembers(info)
	out.MemoryBytes = uint64(C.sl_adapter_device_memory(a))
	out.BackendName = out.Backend.String()
	out.TypeName = out.Type.String()
	var feats C.WGPUSupportedFeatures
	C.sl_wgpuAdapterGetFeatures(a, &feats)
	for _, f := range unsafe.Slice(feats.features, int(feats.featureCount)) {
		if name, ok := featureNames[uint32(f)]; ok {
			out.Features = append(out.Features, name)
		} else {
			out.Features = append(out.Features, fmt.Sprintf("0x%x", uint32(f)))
		}
	}
	C.sl_wgpuSupportedFeaturesFreeMembers(feats)
	var lim C.WGPULimits
	C.sl_wgpuAdapterGetLimits(a, &lim)
	out.Limits = limitsFromC(&lim)
	return out
}

func (a AdapterInfo) key() string {
	return fmt.Sprintf("%d/%x/%x/%s", a.Backend, a.VendorID, a.DeviceID, a.Device)
}

// enumerate requests adapters for every backend and power preference (webgpu.h has
// no enumeration call) and returns the distinct ones with their handles, Null last.
func (in *Instance) enumerate() ([]AdapterInfo, []C.WGPUAdapter) {
	var infos []AdapterInfo
	var handles []C.WGPUAdapter
	seen := map[string]bool{}
	try := func(b Backend, p PowerPreference, fallback bool) {
		a, err := in.requestAdapter(b, p, fallback)
		if err != nil {
			return
		}
		info := adapterInfo(a)
		if seen[info.key()] {
			C.sl_wgpuAdapterRelease(a)
			return
		}
		seen[info.key()] = true
		info.Index = len(infos)
		infos = append(infos, info)
		handles = append(handles, a)
	}
	for _, b := range []Backend{BackendVulkan, BackendMetal, BackendD3D12} {
		for _, p := range []PowerPreference{PowerHighPerformance, PowerLow} {
			try(b, p, false)
		}
		try(b, PowerDefault, true)
	}
	// What the implementation hands out by default, which is where a Null adapter shows up.
	try(BackendUndefined, PowerDefault, false)
	return infos, handles
}

// Adapters lists every adapter the implementation offers, including unusable Null
// ones (their Backend is BackendNull) so callers can explain what is wrong.
func (in *Instance) Adapters() []AdapterInfo {
	infos, handles := in.enumerate()
	for _, a := range handles {
		C.sl_wgpuAdapterRelease(a)
	}
	return infos
}

// Options choose the adapter and configure the device.
type Options struct {
	// Backend restricts the choice to one backend (BackendUndefined: any).
	Backend Backend
	// Adapter picks by index into Adapters() when >= 0 (use -1 for "not set").
	Adapter int
	// AdapterName picks the first adapter whose device, vendor or description
	// contains this text, case-insensitively.
	AdapterName string
	Power       PowerPreference
	// Toggles are extra Dawn toggles to enable, e.g. "disable_robustness".
	Toggles []string
	// NoSubgroups leaves the adapter's subgroups feature off: kernels then
	// reduce with workgroup-memory trees only, as on adapters without it.
	NoSubgroups bool
}

// DefaultOptions select the best usable adapter.
func DefaultOptions() Options { return Options{Adapter: -1, Power: PowerHighPerformance} }

// ErrNoAdapter is returned when no usable (non-Null) adapter exists.
var ErrNoAdapter = errors.New("no usable WebGPU adapter")

// NullAdapterHelp tells the user how to get a real adapter.
const NullAdapterHelp = "Dawn found no usable GPU or CPU Vulkan driver and offers only its Null backend, " +
	"which computes nothing. Install a Vulkan driver: your GPU vendor's, or Mesa >= 24 lavapipe as a " +
	"CPU fallback (Debian 12: `make setup` installs mesa-vulkan-drivers from bookworm-backports; " +
	"Debian 12's own Mesa 22 is too old for Dawn)."

// OpenDevice picks an adapter by the options and creates a device with the
// adapter's maximum limits. It never accepts a Null-backend adapter.
func (in *Instance) OpenDevice(opts Options) (*Device, error) {
	infos, handles := in.enumerate()
	defer func() {
		for _, a := range handles {
			if a != nil {
				C.sl_wgpuAdapterRelease(a)
			}
		}
	}()
	pick := -1
	var nulls int
	for i, info := range infos {
		if info.Backend == BackendNull {
			nulls++
			if opts.Adapter == i {
				return nil, fmt.Errorf("adapter %d is Dawn's Null backend: %w. %s", i, ErrNoAdapter, NullAdapterHelp)
			}
			continue
		}
		if opts.Backend != BackendUndefined && info.Backend != opts.Backend {
			continue
		}
		if opts.Adapter >= 0 && opts.Adapter != i {
			continue
		}
		if opts.AdapterName != "" {
			hay := strings.ToLower(info.Device + " " + info.Vendor + " " + info.Description)
			if !strings.Contains(hay, strings.ToLower(opts.AdapterName)) {
				continue
			}
		}
		if pick < 0 || betterAdapter(info, infos[pick], opts.Power) {
			pick = i
		}
	}
	if pick < 0 {
		if len(infos) == nulls {
			return nil, fmt.Errorf("%w: %s", ErrNoAdapter, NullAdapterHelp)
		}
		return nil, fmt.Errorf("%w matches backend=%s adapter=%d name=%q (run `sparselora devices` to list them)",
			ErrNoAdapter, opts.Backend, opts.Adapter, opts.AdapterName)
	}
	dev, err := in.newDevice(handles[pick], infos[pick], opts)
	if err != nil {
		return nil, err
	}
	handles[pick] = nil // the device keeps its adapter
	return dev, nil
}

// betterAdapter ranks discrete over integrated over CPU (reversed for low power).
func betterAdapter(a, b AdapterInfo, power PowerPreference) bool {
	rank := map[AdapterType]int{1: 3, 2: 2, 3: 1}
	if power == PowerLow {
		rank = map[AdapterType]int{2: 3, 1: 2, 3: 1}
	}
	return rank[a.Type] > rank[b.Type]
}
