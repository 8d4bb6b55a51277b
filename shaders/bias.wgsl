// bias.wgsl: adds a frozen bias vector to every row of a row-major
// [rows, cols] array y, in place (Qwen2's q/k/v projection biases):
//   y[r, c] += b[c]
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `y`: element (r, c) at y_base + r*cols + c.
//   2  storage, read, array<u32> `b`: b[c] at b_base + c, as f32 bits, or with
//      B_BF16 as bfloat16 packed two per word (element 2i in the low half;
//      b_base then counts halves).
//
// Params (16 bytes, little-endian u32): n (rows*cols), cols (>= 1), y_base, b_base.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one element each: element
// i = flat_element over the 2-D grid (prelude.wgsl); those with i >= n exit.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.
//   B_BF16: bool         the bias is bf16 packed in u32 words (else f32 bits).

struct Params {
    n: u32,
    cols: u32,
    y_base: u32,
    b_base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.n) {
        return;
    }
    y[p.y_base + i] += load_f32_or_bf16(&b, p.b_base + i % p.cols, B_BF16);
}
