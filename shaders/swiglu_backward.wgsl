// swiglu_backward.wgsl: gradients of h = silu(g) * u (swiglu.wgsl), elementwise
// over n values, given dh, written in place over the forward's g and u:
//   g[i] <- dg[i] = dh[i] * u[i] * silu'(g[i]),  silu'(z) = s * (1 + z*(1 - s)), s = sigmoid(z)
//   u[i] <- du[i] = dh[i] * silu(g[i])
// In place because backward never reads g and u again, and their gradients
// then need no [tokens, intermediate] buffers of their own: each invocation
// reads its element of g and u before it writes them.
//
// This is its own file rather than a variant of swiglu.wgsl because the bind
// group layout comes from what `main` references, whatever the consts: one
// layout for both passes would leave writable bindings unused in the forward.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `g`:  g[i] at g_base + i; dg on return.
//   2  storage, read_write, array<f32> `u`:  u[i] at u_base + i; du on return.
//   3  storage, read_write, array<f32> `dh`: dh[i] at dh_base + i.
// dh is only read but declared read_write so that it may share a buffer with g
// and u (WebGPU forbids binding one buffer both read-only and writable in a
// dispatch; writable bindings may share one if they do not overlap).
//
// Params (16 bytes, little-endian u32): n, g_base, u_base, dh_base.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one element each: element
// i = flat_element over the 2-D grid (prelude.wgsl); those with i >= n exit.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.

struct Params {
    n: u32, g_base: u32, u_base: u32, dh_base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> dh: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.n) {
        return;
    }
    let z = g[p.g_base + i];
    let up = u[p.u_base + i];
    let grad = dh[p.dh_base + i];
    let s = sigmoid(z);
    g[p.g_base + i] = grad * up * s * (1.0 + z * (1.0 - s));
    u[p.u_base + i] = grad * z * s;
}
