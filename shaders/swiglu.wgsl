// swiglu.wgsl: the gated activation of the LLaMA MLP, elementwise over n values:
//   h[i] = silu(g[i]) * u[i],   silu(z) = z * sigmoid(z)
// (g = gate_proj output, u = up_proj output). The sigmoid (prelude.wgsl) goes through
// exp(-|z|), which never overflows, so large |z| gives 0 or z, not inf/inf.
// The backward pass is swiglu_backward.wgsl.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `g`: g[i] at g_base + i.
//   2  storage, read_write, array<f32> `u`: u[i] at u_base + i.
//   3  storage, read_write, array<f32> `h`: h[i] at h_base + i.
// g and u are only read but declared read_write so that all three may share a
// buffer (WebGPU forbids binding one buffer both read-only and writable in a
// dispatch; writable bindings may share one if they do not overlap).
//
// Params (16 bytes, little-endian u32): n, g_base, u_base, h_base.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one element each: element
// i = flat_element over the 2-D grid (prelude.wgsl); those with i >= n exit.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.

struct Params {
    n: u32,
    g_base: u32,
    u_base: u32,
    h_base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.n) {
        return;
    }
    let z = g[p.g_base + i];
    h[p.h_base + i] = z * sigmoid(z) * u[p.u_base + i];
}
