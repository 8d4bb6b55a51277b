#include "shim.h"

#include <pthread.h>
#ifdef _WIN32
#include <windows.h>
static void* sl_dlopen(const char* path) { return (void*)LoadLibraryA(path); }
static void* sl_dlsym(void* h, const char* name) { return (void*)GetProcAddress((HMODULE)h, name); }
static const char* sl_dlerror(void) { return "LoadLibrary failed (is the DLL built for this architecture?)"; }
#else
#include <dlfcn.h>
static void* sl_dlopen(const char* path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void* sl_dlsym(void* h, const char* name) { return dlsym(h, name); }
static const char* sl_dlerror(void) { return dlerror(); }
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The entry-point table is process-wide because the shared library it points into is
// process-wide; sl_load fills it once (the Go side guards the call with sync.Once).
#define SL_FIELD(ret, name, params) ret(*name) params;
static struct {
  SL_PROCS(SL_FIELD)
} procs;

// Dawn's AdapterPropertiesMemoryHeaps (dawn.json): sType 0x50013 in the Dawn
// that make setup fetches, measured against its wgpuAdapterGetInfo.
#define SL_STYPE_ADAPTER_PROPERTIES_MEMORY_HEAPS 0x00050013
#define SL_HEAP_DEVICE_LOCAL 0x1
typedef struct {
  uint64_t properties;  // WGPUHeapProperty bits
  uint64_t size;
} sl_memory_heap_info;
typedef struct {
  WGPUChainedStruct chain;
  size_t heapCount;
  sl_memory_heap_info const* heapInfo;
} sl_memory_heaps;
static void (*memory_heaps_free)(sl_memory_heaps);

int sl_load(const char* path, char* err, size_t errlen) {
  void* h = sl_dlopen(path);
  if (!h) {
    snprintf(err, errlen, "%s", sl_dlerror());
    return 1;
  }
#define SL_RESOLVE(ret, name, params)                                           \
  procs.name = (ret(*) params)sl_dlsym(h, #name);                                  \
  if (!procs.name) {                                                            \
    snprintf(err, errlen, "%s does not export %s (not a webgpu.h library?)", path, #name); \
    return 2;                                                                   \
  }
  SL_PROCS(SL_RESOLVE)
  // Dawn's extension, looked up but not required: its presence says the
  // library is Dawn, whose chained-struct types sl_adapter_device_memory uses.
  memory_heaps_free = (void (*)(sl_memory_heaps))sl_dlsym(h, "wgpuAdapterPropertiesMemoryHeapsFreeMembers");
  return 0;
}

uint64_t sl_adapter_device_memory(WGPUAdapter a) {
  if (!memory_heaps_free) {
    return 0;
  }
  sl_memory_heaps heaps;
  memset(&heaps, 0, sizeof heaps);
  heaps.chain.sType = SL_STYPE_ADAPTER_PROPERTIES_MEMORY_HEAPS;
  WGPUAdapterInfo info;
  memset(&info, 0, sizeof info);
  info.nextInChain = &heaps.chain;
  // Fails (status 2) where the adapter lacks the AdapterPropertiesMemoryHeaps feature.
  if (procs.wgpuAdapterGetInfo(a, &info) != 1) {
    return 0;
  }
  uint64_t best = 0;
  // bun-webgpu 0.1.5 (macOS) and 0.1.7 (Linux) define the same sType; a
  // library that does not fills nothing, or not heapInfo.
  for (size_t i = 0; heaps.heapInfo != NULL && i < heaps.heapCount; i++) {
    if ((heaps.heapInfo[i].properties & SL_HEAP_DEVICE_LOCAL) && heaps.heapInfo[i].size > best) {
      best = heaps.heapInfo[i].size;
    }
  }
  info.nextInChain = NULL;
  procs.wgpuAdapterInfoFreeMembers(info);
  memory_heaps_free(heaps);
  return best;
}

// Wrappers: cgo cannot call C function pointers directly.

WGPUInstance sl_wgpuCreateInstance(WGPUInstanceDescriptor const* d) { return procs.wgpuCreateInstance(d); }
WGPUStatus sl_wgpuGetInstanceCapabilities(WGPUInstanceCapabilities* c) { return procs.wgpuGetInstanceCapabilities(c); }
WGPUFuture sl_wgpuInstanceRequestAdapter(WGPUInstance i, WGPURequestAdapterOptions const* o, WGPURequestAdapterCallbackInfo cb) { return procs.wgpuInstanceRequestAdapter(i, o, cb); }
WGPUWaitStatus sl_wgpuInstanceWaitAny(WGPUInstance i, size_t n, WGPUFutureWaitInfo* f, uint64_t t) { return procs.wgpuInstanceWaitAny(i, n, f, t); }
void sl_wgpuInstanceProcessEvents(WGPUInstance i) { procs.wgpuInstanceProcessEvents(i); }
void sl_wgpuInstanceRelease(WGPUInstance i) { procs.wgpuInstanceRelease(i); }
WGPUStatus sl_wgpuAdapterGetInfo(WGPUAdapter a, WGPUAdapterInfo* info) { return procs.wgpuAdapterGetInfo(a, info); }
void sl_wgpuAdapterInfoFreeMembers(WGPUAdapterInfo info) { procs.wgpuAdapterInfoFreeMembers(info); }
WGPUStatus sl_wgpuAdapterGetLimits(WGPUAdapter a, WGPULimits* l) { return procs.wgpuAdapterGetLimits(a, l); }
void sl_wgpuAdapterGetFeatures(WGPUAdapter a, WGPUSupportedFeatures* f) { procs.wgpuAdapterGetFeatures(a, f); }
void sl_wgpuSupportedFeaturesFreeMembers(WGPUSupportedFeatures f) { procs.wgpuSupportedFeaturesFreeMembers(f); }
WGPUFuture sl_wgpuAdapterRequestDevice(WGPUAdapter a, WGPUDeviceDescriptor const* d, WGPURequestDeviceCallbackInfo cb) { return procs.wgpuAdapterRequestDevice(a, d, cb); }
void sl_wgpuAdapterRelease(WGPUAdapter a) { procs.wgpuAdapterRelease(a); }
WGPUQueue sl_wgpuDeviceGetQueue(WGPUDevice d) { return procs.wgpuDeviceGetQueue(d); }
WGPUStatus sl_wgpuDeviceGetLimits(WGPUDevice d, WGPULimits* l) { return procs.wgpuDeviceGetLimits(d, l); }
WGPUBuffer sl_wgpuDeviceCreateBuffer(WGPUDevice d, WGPUBufferDescriptor const* desc) { return procs.wgpuDeviceCreateBuffer(d, desc); }
WGPUShaderModule sl_wgpuDeviceCreateShaderModule(WGPUDevice d, WGPUShaderModuleDescriptor const* desc) { return procs.wgpuDeviceCreateShaderModule(d, desc); }
WGPUComputePipeline sl_wgpuDeviceCreateComputePipeline(WGPUDevice d, WGPUComputePipelineDescriptor const* desc) { return procs.wgpuDeviceCreateComputePipeline(d, desc); }
WGPUBindGroup sl_wgpuDeviceCreateBindGroup(WGPUDevice d, WGPUBindGroupDescriptor const* desc) { return procs.wgpuDeviceCreateBindGroup(d, desc); }
WGPUCommandEncoder sl_wgpuDeviceCreateCommandEncoder(WGPUDevice d, WGPUCommandEncoderDescriptor const* desc) { return procs.wgpuDeviceCreateCommandEncoder(d, desc); }
WGPUQuerySet sl_wgpuDeviceCreateQuerySet(WGPUDevice d, WGPUQuerySetDescriptor const* desc) { return procs.wgpuDeviceCreateQuerySet(d, desc); }
void sl_wgpuDevicePushErrorScope(WGPUDevice d, WGPUErrorFilter f) { procs.wgpuDevicePushErrorScope(d, f); }
WGPUFuture sl_wgpuDevicePopErrorScope(WGPUDevice d, WGPUPopErrorScopeCallbackInfo cb) { return procs.wgpuDevicePopErrorScope(d, cb); }
void sl_wgpuDeviceDestroy(WGPUDevice d) { procs.wgpuDeviceDestroy(d); }
void sl_wgpuDeviceRelease(WGPUDevice d) { procs.wgpuDeviceRelease(d); }
void sl_wgpuBufferDestroy(WGPUBuffer b) { procs.wgpuBufferDestroy(b); }
void sl_wgpuBufferRelease(WGPUBuffer b) { procs.wgpuBufferRelease(b); }
WGPUFuture sl_wgpuBufferMapAsync(WGPUBuffer b, WGPUMapMode m, size_t off, size_t size, WGPUBufferMapCallbackInfo cb) { return procs.wgpuBufferMapAsync(b, m, off, size, cb); }
void const* sl_wgpuBufferGetConstMappedRange(WGPUBuffer b, size_t off, size_t size) { return procs.wgpuBufferGetConstMappedRange(b, off, size); }
void sl_wgpuBufferUnmap(WGPUBuffer b) { procs.wgpuBufferUnmap(b); }
void sl_wgpuQueueWriteBuffer(WGPUQueue q, WGPUBuffer b, uint64_t off, void const* data, size_t size) { procs.wgpuQueueWriteBuffer(q, b, off, data, size); }
void sl_wgpuQueueSubmit(WGPUQueue q, size_t n, WGPUCommandBuffer const* cmds) { procs.wgpuQueueSubmit(q, n, cmds); }
WGPUFuture sl_wgpuQueueOnSubmittedWorkDone(WGPUQueue q, WGPUQueueWorkDoneCallbackInfo cb) { return procs.wgpuQueueOnSubmittedWorkDone(q, cb); }
void sl_wgpuQueueRelease(WGPUQueue q) { procs.wgpuQueueRelease(q); }
WGPUComputePassEncoder sl_wgpuCommandEncoderBeginComputePass(WGPUCommandEncoder e, WGPUComputePassDescriptor const* desc) { return procs.wgpuCommandEncoderBeginComputePass(e, desc); }
void sl_wgpuCommandEncoderCopyBufferToBuffer(WGPUCommandEncoder e, WGPUBuffer src, uint64_t so, WGPUBuffer dst, uint64_t dof, uint64_t size) { procs.wgpuCommandEncoderCopyBufferToBuffer(e, src, so, dst, dof, size); }
void sl_wgpuCommandEncoderClearBuffer(WGPUCommandEncoder e, WGPUBuffer b, uint64_t off, uint64_t size) { procs.wgpuCommandEncoderClearBuffer(e, b, off, size); }
void sl_wgpuCommandEncoderResolveQuerySet(WGPUCommandEncoder e, WGPUQuerySet qs, uint32_t first, uint32_t count, WGPUBuffer dst, uint64_t off) { procs.wgpuCommandEncoderResolveQuerySet(e, qs, first, count, dst, off); }
WGPUCommandBuffer sl_wgpuCommandEncoderFinish(WGPUCommandEncoder e, void const* desc) { return procs.wgpuCommandEncoderFinish(e, desc); }
void sl_wgpuCommandEncoderRelease(WGPUCommandEncoder e) { procs.wgpuCommandEncoderRelease(e); }
void sl_wgpuCommandBufferRelease(WGPUCommandBuffer c) { procs.wgpuCommandBufferRelease(c); }
void sl_wgpuComputePassEncoderSetPipeline(WGPUComputePassEncoder p, WGPUComputePipeline pl) { procs.wgpuComputePassEncoderSetPipeline(p, pl); }
void sl_wgpuComputePassEncoderSetBindGroup(WGPUComputePassEncoder p, uint32_t idx, WGPUBindGroup g, size_t n, uint32_t const* offs) { procs.wgpuComputePassEncoderSetBindGroup(p, idx, g, n, offs); }
void sl_wgpuComputePassEncoderDispatchWorkgroups(WGPUComputePassEncoder p, uint32_t x, uint32_t y, uint32_t z) { procs.wgpuComputePassEncoderDispatchWorkgroups(p, x, y, z); }
void sl_wgpuComputePassEncoderDispatchWorkgroupsIndirect(WGPUComputePassEncoder p, WGPUBuffer b, uint64_t off) { procs.wgpuComputePassEncoderDispatchWorkgroupsIndirect(p, b, off); }
void sl_wgpuComputePassEncoderEnd(WGPUComputePassEncoder p) { procs.wgpuComputePassEncoderEnd(p); }
void sl_wgpuComputePassEncoderRelease(WGPUComputePassEncoder p) { procs.wgpuComputePassEncoderRelease(p); }
WGPUBindGroupLayout sl_wgpuComputePipelineGetBindGroupLayout(WGPUComputePipeline p, uint32_t i) { return procs.wgpuComputePipelineGetBindGroupLayout(p, i); }
void sl_wgpuComputePipelineRelease(WGPUComputePipeline p) { procs.wgpuComputePipelineRelease(p); }
void sl_wgpuBindGroupLayoutRelease(WGPUBindGroupLayout l) { procs.wgpuBindGroupLayoutRelease(l); }
void sl_wgpuBindGroupRelease(WGPUBindGroup g) { procs.wgpuBindGroupRelease(g); }
void sl_wgpuShaderModuleRelease(WGPUShaderModule m) { procs.wgpuShaderModuleRelease(m); }
void sl_wgpuQuerySetDestroy(WGPUQuerySet q) { procs.wgpuQuerySetDestroy(q); }
void sl_wgpuQuerySetRelease(WGPUQuerySet q) { procs.wgpuQuerySetRelease(q); }

static void copy_view(char* dst, size_t cap, WGPUStringView v) {
  if (cap == 0) return;
  size_t n = 0;
  if (v.data) n = (v.length == SL_WGPU_STRLEN) ? strlen(v.data) : v.length;
  if (n >= cap) n = cap - 1;
  if (n) memcpy(dst, v.data, n);
  dst[n] = 0;
}

struct sl_device_state {
  pthread_mutex_t mu;
  uint32_t error_type;
  char error[4096];
  uint32_t lost_reason;
  char lost[1024];
};

sl_device_state* sl_device_state_new(void) {
  sl_device_state* s = calloc(1, sizeof *s);
  if (s) pthread_mutex_init(&s->mu, NULL);
  return s;
}

void sl_device_state_free(sl_device_state* s) {
  if (!s) return;
  pthread_mutex_destroy(&s->mu);
  free(s);
}

uint32_t sl_device_take_error(sl_device_state* s, char* msg, size_t msglen) {
  pthread_mutex_lock(&s->mu);
  uint32_t t = s->error_type;
  if (t) snprintf(msg, msglen, "%s", s->error);
  s->error_type = 0;
  pthread_mutex_unlock(&s->mu);
  return t;
}

uint32_t sl_device_lost(sl_device_state* s, char* msg, size_t msglen) {
  pthread_mutex_lock(&s->mu);
  uint32_t r = s->lost_reason;
  if (r) snprintf(msg, msglen, "%s", s->lost);
  pthread_mutex_unlock(&s->mu);
  return r;
}

static void on_uncaptured(WGPUDevice const* d, WGPUErrorType type, WGPUStringView msg, void* u1, void* u2) {
  (void)d; (void)u2;
  sl_device_state* s = u1;
  pthread_mutex_lock(&s->mu);
  if (!s->error_type) {  // keep the first error: later ones are usually consequences
    s->error_type = type;
    copy_view(s->error, sizeof s->error, msg);
  }
  pthread_mutex_unlock(&s->mu);
}

static void on_lost(WGPUDevice const* d, WGPUDeviceLostReason reason, WGPUStringView msg, void* u1, void* u2) {
  (void)d; (void)u2;
  sl_device_state* s = u1;
  pthread_mutex_lock(&s->mu);
  s->lost_reason = reason;
  copy_view(s->lost, sizeof s->lost, msg);
  pthread_mutex_unlock(&s->mu);
}

// The release store pairs with the acquire load in sl_result_done: a thread that
// sees done also sees the fields written before it.
static void sl_mark_done(sl_result* r) { __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE); }

int sl_result_done(sl_result* r) { return __atomic_load_n(&r->done, __ATOMIC_ACQUIRE); }

static void on_adapter(WGPURequestAdapterStatus st, WGPUAdapter a, WGPUStringView msg, void* u1, void* u2) {
  (void)u2;
  sl_result* r = u1;
  r->status = st;
  r->object = a;
  copy_view(r->message, sizeof r->message, msg);
  sl_mark_done(r);
}

static void on_device(WGPURequestDeviceStatus st, WGPUDevice d, WGPUStringView msg, void* u1, void* u2) {
  (void)u2;
  sl_result* r = u1;
  r->status = st;
  r->object = d;
  copy_view(r->message, sizeof r->message, msg);
  sl_mark_done(r);
}

static void on_pop(WGPUPopErrorScopeStatus st, WGPUErrorType type, WGPUStringView msg, void* u1, void* u2) {
  (void)u2;
  sl_result* r = u1;
  r->status = st;
  r->type = type;
  copy_view(r->message, sizeof r->message, msg);
  sl_mark_done(r);
}

static void on_map(WGPUMapAsyncStatus st, WGPUStringView msg, void* u1, void* u2) {
  (void)u2;
  sl_result* r = u1;
  r->status = st;
  copy_view(r->message, sizeof r->message, msg);
  sl_mark_done(r);
}

static void on_done(WGPUQueueWorkDoneStatus st, WGPUStringView msg, void* u1, void* u2) {
  (void)u2;
  sl_result* r = u1;
  r->status = st;
  copy_view(r->message, sizeof r->message, msg);
  sl_mark_done(r);
}

enum { MODE_WAIT_ANY_ONLY = 1, MODE_ALLOW_SPONTANEOUS = 3 };

WGPUFuture sl_request_adapter(WGPUInstance inst, WGPURequestAdapterOptions const* opts, sl_result* r) {
  WGPURequestAdapterCallbackInfo cb = {0};
  cb.mode = MODE_WAIT_ANY_ONLY;
  cb.callback = on_adapter;
  cb.userdata1 = r;
  return procs.wgpuInstanceRequestAdapter(inst, opts, cb);
}

WGPUFuture sl_request_device(WGPUAdapter a, WGPUDeviceDescriptor* desc, sl_device_state* s, sl_result* r) {
  desc->deviceLostCallbackInfo.mode = MODE_ALLOW_SPONTANEOUS;
  desc->deviceLostCallbackInfo.callback = on_lost;
  desc->deviceLostCallbackInfo.userdata1 = s;
  desc->uncapturedErrorCallbackInfo.callback = on_uncaptured;
  desc->uncapturedErrorCallbackInfo.userdata1 = s;
  WGPURequestDeviceCallbackInfo cb = {0};
  cb.mode = MODE_WAIT_ANY_ONLY;
  cb.callback = on_device;
  cb.userdata1 = r;
  return procs.wgpuAdapterRequestDevice(a, desc, cb);
}

WGPUFuture sl_pop_error_scope(WGPUDevice d, sl_result* r) {
  WGPUPopErrorScopeCallbackInfo cb = {0};
  cb.mode = MODE_WAIT_ANY_ONLY;
  cb.callback = on_pop;
  cb.userdata1 = r;
  return procs.wgpuDevicePopErrorScope(d, cb);
}

WGPUFuture sl_map_read(WGPUBuffer b, size_t off, size_t size, sl_result* r) {
  WGPUBufferMapCallbackInfo cb = {0};
  cb.mode = MODE_WAIT_ANY_ONLY;
  cb.callback = on_map;
  cb.userdata1 = r;
  return procs.wgpuBufferMapAsync(b, 1 /* MapMode_Read */, off, size, cb);
}

WGPUFuture sl_work_done(WGPUQueue q, sl_result* r) {
  WGPUQueueWorkDoneCallbackInfo cb = {0};
  cb.mode = MODE_WAIT_ANY_ONLY;
  cb.callback = on_done;
  cb.userdata1 = r;
  return procs.wgpuQueueOnSubmittedWorkDone(q, cb);
}

WGPUWaitStatus sl_wait(WGPUInstance inst, WGPUFuture f, uint64_t timeout_ns) {
  WGPUFutureWaitInfo w = {0};
  w.future = f;
  return procs.wgpuInstanceWaitAny(inst, 1, &w, timeout_ns);
}
