// rmsnorm.wgsl: RMSNorm forward, as Hugging Face's LlamaRMSNorm computes it in
// f32: for each row r of a row-major [rows, cols] array x,
//   rstd[r] = 1 / sqrt(mean_c x[r, c]^2 + eps)
//   y[r, c] = x[r, c] * rstd[r] * w[c]
// rstd is kept for the backward pass (rmsnorm_backward.wgsl), which would
// otherwise have to reduce each row again.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `x`: the input, row r at x_base + r*cols.
//      Only read, but declared read_write so that x may share a buffer with the
//      outputs: WebGPU forbids binding one buffer both read-only and writable in
//      a dispatch, and writable bindings may share a buffer if they do not overlap.
//   2  storage, read, array<u32> `w`: the frozen weight [cols] from element
//      w_base, as f32 bits, or with W_BF16 as bfloat16 packed two per word
//      (element 2i in the low half); w_base then counts bf16 halves.
//   3  storage, read_write, array<f32> `y`: the output, row r at y_base + r*cols.
//   4  storage, read_write, array<f32> `rstd`: rstd[r] at rstd_base + r.
// The bases let tensors sit at any 4-byte offset although storage bindings start
// at multiples of minStorageBufferOffsetAlignment: the host binds from the
// aligned offset at or below each tensor and passes the remainder here.
//
// Params (32 bytes, little-endian):
//   offset 0   rows: u32
//   offset 4   cols: u32        >= 1
//   offset 8   x_base: u32
//   offset 12  w_base: u32
//   offset 16  y_base: u32
//   offset 20  rstd_base: u32
//   offset 24  eps: f32
//   offset 28  4 bytes of padding
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one workgroup per row: row
// flat_workgroup over the 2-D grid (prelude.wgsl); workgroups past the last row
// exit. A row's invocations stride over its columns, then add their partial sums
// of squares with workgroup_sum.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup; a power of two (the tree
//                        reduction halves it).
//   W_BF16: bool         the weight is bf16 packed in u32 words (else f32 bits).

struct Params {
    rows: u32, cols: u32, x_base: u32, w_base: u32,
    y_base: u32, rstd_base: u32, eps: f32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;

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
    var acc = 0.0;
    for (var c = lane; c < p.cols; c += WORKGROUP_SIZE) {
        let v = x[x_row + c];
        acc += v * v;
    }
    let r = inverseSqrt(workgroup_sum(lane, acc) / f32(p.cols) + p.eps);
    if (lane == 0u) {
        rstd[p.rstd_base + row] = r;
    }
    let y_row = p.y_base + row * p.cols;
    for (var c = lane; c < p.cols; c += WORKGROUP_SIZE) {
        y[y_row + c] = x[x_row + c] * r * weight(c);
    }
}
