// rope.wgsl: rotary position embedding in Hugging Face's "rotate_half" form,
// in place on a row-major [rows, heads*head_dim] array x (queries or keys).
// Within each head, dimension e < half (half = head_dim/2) pairs with e + half:
//   (a, b) = (x[e], x[e + half])
//   x[e]        = a*cos - b*sin
//   x[e + half] = b*cos + a*sin
// with cos, sin of the angle pos * inv_freq[e], read from a table the host
// computes. Token row t has position pos = t mod seq: every batch row of seq
// tokens starts at position 0, padded rows too.
// The backward pass applies the transposed rotation, by -angle, to the gradient:
// the host passes sin_sign = -1 (forward: +1).
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read, array<f32> `table`: cos[pos, e] at
//      table_base + pos*half + e and sin[pos, e] at
//      table_base + (table_rows + pos)*half + e, for pos < table_rows >= seq.
//   2  storage, read_write, array<f32> `x`: pair (t, head, e) at
//      x_base + (t*heads + head)*2*half + e and the same + half.
//
// Params (48 bytes, little-endian u32 unless noted):
//   offset 0   pairs        rows*heads*half, the number of invocations with work
//   offset 4   heads
//   offset 8   half         head_dim / 2
//   offset 12  seq          positions per batch row
//   offset 16  table_rows   positions in the table
//   offset 20  table_base
//   offset 24  x_base
//   offset 28  sin_sign: f32   +1 forward, -1 backward
//   offset 32  start        position of the first row (decoding with a KV cache
//                           rotates one new row at its place in the sequence)
//   offset 36  12 bytes of padding
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one pair each: invocation
// rotates pair i = flat_element over the 2-D grid (prelude.wgsl), where
// e = i mod half, i / half = t*heads + head.
// Invocations past the last pair do nothing.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.

struct Params {
    pairs: u32, heads: u32, half: u32, seq: u32,
    table_rows: u32, table_base: u32, x_base: u32, sin_sign: f32,
    start: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.pairs) {
        return;
    }
    let e = i % p.half;
    let token_head = i / p.half;
    let pos = p.start + (token_head / p.heads) % p.seq;
    let cos_index = p.table_base + pos * p.half + e;
    let c = table[cos_index];
    let s = p.sin_sign * table[cos_index + p.table_rows * p.half];
    let lo = p.x_base + token_head * 2u * p.half + e;
    let hi = lo + p.half;
    let a = x[lo];
    let b = x[hi];
    x[lo] = a * c - b * s;
    x[hi] = b * c + a * s;
}
