// C side of the gpu package: a table of WebGPU entry points resolved with dlsym, thin
// call-through wrappers, and C callbacks that record asynchronous results in plain
// structs so Go never has to be re-entered from a WebGPU thread.
#ifndef SPARSELORA_SHIM_H
#define SPARSELORA_SHIM_H

#include "webgpu_abi.h"

// X-macro list of every WebGPU entry point the package calls: (return, name, params).
#define SL_PROCS(X)                                                                              \
  X(WGPUInstance, wgpuCreateInstance, (WGPUInstanceDescriptor const* d))                         \
  X(WGPUStatus, wgpuGetInstanceCapabilities, (WGPUInstanceCapabilities * c))                      \
  X(WGPUFuture, wgpuInstanceRequestAdapter,                                                      \
    (WGPUInstance i, WGPURequestAdapterOptions const* o, WGPURequestAdapterCallbackInfo cb))     \
  X(WGPUWaitStatus, wgpuInstanceWaitAny,                                                         \
    (WGPUInstance i, size_t n, WGPUFutureWaitInfo* f, uint64_t timeoutNS))                       \
  X(void, wgpuInstanceProcessEvents, (WGPUInstance i))                                           \
  X(void, wgpuInstanceRelease, (WGPUInstance i))                                                 \
  X(WGPUStatus, wgpuAdapterGetInfo, (WGPUAdapter a, WGPUAdapterInfo * info))                     \
  X(void, wgpuAdapterInfoFreeMembers, (WGPUAdapterInfo info))                                    \
  X(WGPUStatus, wgpuAdapterGetLimits, (WGPUAdapter a, WGPULimits * l))                           \
  X(void, wgpuAdapterGetFeatures, (WGPUAdapter a, WGPUSupportedFeatures * f))                    \
  X(void, wgpuSupportedFeaturesFreeMembers, (WGPUSupportedFeatures f))                           \
  X(WGPUFuture, wgpuAdapterRequestDevice,                                                        \
    (WGPUAdapter a, WGPUDeviceDescriptor const* d, WGPURequestDeviceCallbackInfo cb))            \
  X(void, wgpuAdapterRelease, (WGPUAdapter a))                                                   \
  X(WGPUQueue, wgpuDeviceGetQueue, (WGPUDevice d))                                               \
  X(WGPUStatus, wgpuDeviceGetLimits, (WGPUDevice d, WGPULimits * l))                             \
  X(WGPUBuffer, wgpuDeviceCreateBuffer, (WGPUDevice d, WGPUBufferDescriptor const* desc))        \
  X(WGPUShaderModule, wgpuDeviceCreateShaderModule,                                              \
    (WGPUDevice d, WGPUShaderModuleDescriptor const* desc))                                      \
  X(WGPUComputePipeline, wgpuDeviceCreateComputePipeline,                                        \
    (WGPUDevice d, WGPUComputePipelineDescriptor const* desc))                                   \
  X(WGPUBindGroup, wgpuDeviceCreateBindGroup, (WGPUDevice d, WGPUBindGroupDescriptor const* desc)) \
  X(WGPUCommandEncoder, wgpuDeviceCreateCommandEncoder,                                          \
    (WGPUDevice d, WGPUCommandEncoderDescriptor const* desc))                                    \
  X(WGPUQuerySet, wgpuDeviceCreateQuerySet, (WGPUDevice d, WGPUQuerySetDescriptor const* desc))  \
  X(void, wgpuDevicePushErrorScope, (WGPUDevice d, WGPUErrorFilter f))                           \
  X(WGPUFuture, wgpuDevicePopErrorScope, (WGPUDevice d, WGPUPopErrorScopeCallbackInfo cb))       \
  X(void, wgpuDeviceDestroy, (WGPUDevice d))                                                     \
  X(void, wgpuDeviceRelease, (WGPUDevice d))                                                     \
  X(void, wgpuBufferDestroy, (WGPUBuffer b))                                                     \
  X(void, wgpuBufferRelease, (WGPUBuffer b))                                                     \
  X(WGPUFuture, wgpuBufferMapAsync,                                                              \
    (WGPUBuffer b, WGPUMapMode m, size_t off, size_t size, WGPUBufferMapCallbackInfo cb))        \
  X(void const*, wgpuBufferGetConstMappedRange, (WGPUBuffer b, size_t off, size_t size))         \
  X(void, wgpuBufferUnmap, (WGPUBuffer b))                                                       \
  X(void, wgpuQueueWriteBuffer, (WGPUQueue q, WGPUBuffer b, uint64_t off, void const* data, size_t size)) \
  X(void, wgpuQueueSubmit, (WGPUQueue q, size_t n, WGPUCommandBuffer const* cmds))               \
  X(WGPUFuture, wgpuQueueOnSubmittedWorkDone, (WGPUQueue q, WGPUQueueWorkDoneCallbackInfo cb))   \
  X(void, wgpuQueueRelease, (WGPUQueue q))                                                       \
  X(WGPUComputePassEncoder, wgpuCommandEncoderBeginComputePass,                                  \
    (WGPUCommandEncoder e, WGPUComputePassDescriptor const* desc))                               \
  X(void, wgpuCommandEncoderCopyBufferToBuffer,                                                  \
    (WGPUCommandEncoder e, WGPUBuffer src, uint64_t srcOff, WGPUBuffer dst, uint64_t dstOff, uint64_t size)) \
  X(void, wgpuCommandEncoderClearBuffer, (WGPUCommandEncoder e, WGPUBuffer b, uint64_t off, uint64_t size)) \
  X(void, wgpuCommandEncoderResolveQuerySet,                                                     \
    (WGPUCommandEncoder e, WGPUQuerySet qs, uint32_t first, uint32_t count, WGPUBuffer dst, uint64_t off)) \
  X(WGPUCommandBuffer, wgpuCommandEncoderFinish, (WGPUCommandEncoder e, void const* desc))       \
  X(void, wgpuCommandEncoderRelease, (WGPUCommandEncoder e))                                     \
  X(void, wgpuCommandBufferRelease, (WGPUCommandBuffer c))                                       \
  X(void, wgpuComputePassEncoderSetPipeline, (WGPUComputePassEncoder p, WGPUComputePipeline pl)) \
  X(void, wgpuComputePassEncoderSetBindGroup,                                                    \
    (WGPUComputePassEncoder p, uint32_t idx, WGPUBindGroup g, size_t n, uint32_t const* offs))   \
  X(void, wgpuComputePassEncoderDispatchWorkgroups,                                              \
    (WGPUComputePassEncoder p, uint32_t x, uint32_t y, uint32_t z))                              \
  X(void, wgpuComputePassEncoderDispatchWorkgroupsIndirect,                                      \
    (WGPUComputePassEncoder p, WGPUBuffer b, uint64_t off))                                      \
  X(void, wgpuComputePassEncoderEnd, (WGPUComputePassEncoder p))                                 \
  X(void, wgpuComputePassEncoderRelease, (WGPUComputePassEncoder p))                             \
  X(WGPUBindGroupLayout, wgpuComputePipelineGetBindGroupLayout, (WGPUComputePipeline p, uint32_t i)) \
  X(void, wgpuComputePipelineRelease, (WGPUComputePipeline p))                                   \
  X(void, wgpuBindGroupLayoutRelease, (WGPUBindGroupLayout l))                                   \
  X(void, wgpuBindGroupRelease, (WGPUBindGroup g))                                               \
  X(void, wgpuShaderModuleRelease, (WGPUShaderModule m))                                         \
  X(void, wgpuQuerySetDestroy, (WGPUQuerySet q))                                                 \
  X(void, wgpuQuerySetRelease, (WGPUQuerySet q))

#define SL_DECLARE_WRAPPER(ret, name, params) ret sl_##name params;
SL_PROCS(SL_DECLARE_WRAPPER)

// sl_load opens the library at path and resolves every entry point. On failure it
// returns non-zero and writes the reason to err.
int sl_load(const char* path, char* err, size_t errlen);

// Result of one asynchronous call (adapter/device request, map, pop-error-scope,
// queue work done), filled by the C callbacks below.
typedef struct sl_result {
  int done;
  uint32_t status;
  uint32_t type;  // error type for pop-error-scope
  void* object;   // adapter or device
  char message[4096];
} sl_result;

// Whether r's callback has fired (an atomic load: callbacks may run on whichever
// thread calls wgpuInstanceWaitAny). A result struct may be freed only after this
// returns non-zero, or after the instance that owns the call has been destroyed.
int sl_result_done(sl_result* r);

// Errors and loss reported by a device outside any error scope. The callbacks may
// run on Dawn's threads, so the fields are guarded by a mutex inside the C file.
typedef struct sl_device_state sl_device_state;
sl_device_state* sl_device_state_new(void);
void sl_device_state_free(sl_device_state* s);
// Copies the first pending uncaptured error (if any) into msg and clears it. Returns
// its WGPUErrorType, or 0 when there is none.
uint32_t sl_device_take_error(sl_device_state* s, char* msg, size_t msglen);
// Returns the loss reason (0 when the device is alive) and copies its message.
uint32_t sl_device_lost(sl_device_state* s, char* msg, size_t msglen);

WGPUFuture sl_request_adapter(WGPUInstance inst, WGPURequestAdapterOptions const* opts, sl_result* r);
WGPUFuture sl_request_device(WGPUAdapter a, WGPUDeviceDescriptor* desc, sl_device_state* s, sl_result* r);
WGPUFuture sl_pop_error_scope(WGPUDevice d, sl_result* r);
WGPUFuture sl_map_read(WGPUBuffer b, size_t off, size_t size, sl_result* r);
WGPUFuture sl_work_done(WGPUQueue q, sl_result* r);
// The size of the adapter's largest device-local memory heap, from Dawn's
// AdapterPropertiesMemoryHeaps chained on wgpuAdapterGetInfo; 0 where the
// library (not Dawn) or the adapter does not report heaps.
uint64_t sl_adapter_device_memory(WGPUAdapter a);
// Waits for one future; returns the WGPUWaitStatus.
WGPUWaitStatus sl_wait(WGPUInstance inst, WGPUFuture f, uint64_t timeout_ns);

#endif
