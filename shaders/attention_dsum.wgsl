// attention_dsum.wgsl: D = rowsum(dout * out) per token row and attention head,
// the row sum that softmax's backward subtracts (dS = P (dP - D)), for the
// backward passes of attention.wgsl; PADDING_D (attention.wgsl's constant) for
// rows whose attention_mask is 0, which stands in for the mask in the dk/dv
// pass. Computing D first, from the forward's output, spares the dq pass a
// second accumulator (sum_u P dP k_u and sum_u P k_u) per head dimension.
//
// Layouts (row-major f32; T token rows, hd = head_dim):
//   dout, out  [T, heads*hd]    head h in columns h*hd ..
//   mask       [T] 4-byte words  zero = padding, any other word = real token
//   dsum       [T, heads]
//
// Bindings (group 0), all storage read_write so that the operands may share a
// buffer (WebGPU forbids one buffer bound both read-only and writable in a
// dispatch); only dsum is written:
//   0  uniform Params (below)
//   1  `dout`   2  `out`   3  `mask` (u32: tested as bits)   4  `dsum`
//
// Params (32 bytes, little-endian u32):
//   offset 0   count       T * heads
//   offset 4   heads
//   offset 8   head_dim
//   offset 12  dout_base   element index of dout[0] in binding 1
//   offset 16  out_base    ... of out[0] in binding 2
//   offset 20  mask_base   ... of mask[0] in binding 3
//   offset 24  dsum_base   ... of dsum[0] in binding 4
//   offset 28  4 bytes of padding
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one per (row, head) element
// i = row*heads + h, flat over the 2-D grid (prelude.wgsl); invocations past
// count exit.
//
// Injected consts:
//   WORKGROUP_SIZE: u32

const PADDING_D = 3.0e38;

struct Params {
    count: u32, heads: u32, head_dim: u32, dout_base: u32,
    out_base: u32, mask_base: u32, dsum_base: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dout: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<u32>;
@group(0) @binding(4) var<storage, read_write> dsum: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.count) {
        return;
    }
    let row = i / p.heads;
    var d = PADDING_D;
    if (mask[p.mask_base + row] != 0u) {
        let at = i * p.head_dim;
        d = 0.0;
        for (var e = 0u; e < p.head_dim; e++) {
            d += dout[p.dout_base + at + e] * out[p.out_base + at + e];
        }
    }
    dsum[p.dsum_base + i] = d;
}
