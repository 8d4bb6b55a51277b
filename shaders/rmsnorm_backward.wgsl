// rmsnorm_backward.wgsl: the input gradient of RMSNorm (rmsnorm.wgsl) with a
// frozen weight, so there is no weight gradient. For row r, with
// y = x * rstd * w and rstd = (mean(x^2) + eps)^(-1/2), the chain rule through
// rstd (d rstd / d x_c = -rstd^3 x_c / cols) gives
//   g_c  = w_c * dy[r, c]
//   dx[r, c] = rstd * g_c - x[r, c] * rstd^3 * (sum_j g_j x[r, j]) / cols
// using the rstd saved by the forward pass. With ACCUMULATE the result is added
// to dx (the residual stream's gradient collects several branches); otherwise dx
// is overwritten and never read, so it may hold garbage or NaN.
//
// This is its own file rather than a variant of rmsnorm.wgsl because the bind
// group layout comes from what `main` references, whatever the consts: one
// layout for both would leave a writable binding unused in the forward pass.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `x`: the forward input, row r at
//      x_base + r*cols.
//   2  storage, read, array<u32> `w`: the frozen weight [cols] from element
//      w_base, f32 bits, or with W_BF16 bfloat16 two per word (element 2i in the
//      low half; w_base counts halves).
//   3  storage, read_write, array<f32> `rstd`: rstd[r] at rstd_base + r.
//   4  storage, read_write, array<f32> `dy`: the output gradient, row r at
//      dy_base + r*cols.
//   5  storage, read_write, array<f32> `dx`: the input gradient, row r at
//      dx_base + r*cols.
// x, rstd and dy are only read but declared read_write so that they may share a
// buffer with dx: WebGPU forbids binding one buffer both read-only and writable
// in a dispatch. The bases let tensors sit at any 4-byte offset (the host binds
// from the aligned offset at or below each tensor).
//
// Params (32 bytes, little-endian u32):
//   offset 0   rows
//   offset 4   cols       >= 1
//   offset 8   x_base
//   offset 12  w_base
//   offset 16  rstd_base
//   offset 20  dy_base
//   offset 24  dx_base
//   offset 28  4 bytes of padding
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one workgroup per row, row
// flat_workgroup over the 2-D grid (prelude.wgsl; workgroups past the last row
// exit). The row's invocations stride over its columns and add their partial
// dot products sum_j g_j x_j with workgroup_sum.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup; a power of two.
//   W_BF16: bool         the weight is bf16 packed in u32 words (else f32 bits).
//   ACCUMULATE: bool     dx += gradient instead of dx = gradient.

struct Params {
    rows: u32, cols: u32, x_base: u32, w_base: u32,
    rstd_base: u32, dy_base: u32, dx_base: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

// weight widens element c of the weight to f32.
fn weight(c: u32) -> f32 {
    return load_f32_or_bf16(&w, p.w_base + c, W_BF16);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let row = flat_workgroup(workgroup);
    if (row >= p.rows) {
        return;
    }
    let x_row = p.x_base + row * p.cols;
    let dy_row = p.dy_base + row * p.cols;
    var acc = 0.0;
    for (var c = lane; c < p.cols; c += WORKGROUP_SIZE) {
        acc += weight(c) * dy[dy_row + c] * x[x_row + c];
    }
    let dot = workgroup_sum(lane, acc);
    let r = rstd[p.rstd_base + row];
    // x_c's coefficient: rstd^3 * mean_j(g_j x_j).
    let x_coef = r * r * r * (dot / f32(p.cols));
    let dx_row = p.dx_base + row * p.cols;
    for (var c = lane; c < p.cols; c += WORKGROUP_SIZE) {
        let grad = r * weight(c) * dy[dy_row + c] - x_coef * x[x_row + c];
        if (ACCUMULATE) {
            dx[dx_row + c] += grad;
        } else {
            dx[dx_row + c] = grad;
        }
    }
}
