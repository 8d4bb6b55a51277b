// weight_grads.wgsl: the gradients of the weights that full-parameter
// training adds beyond the projections' (which are GEMMs):
//   OP_COLUMN_SUM  out[c] += sum_r a[r, c] * s(r, c) over rows r, where s is
//                  1, or with SCALED b[r, c] * rstd[r]: the RMSNorm weight
//                  gradient (a = dy, b = x, rstd saved by the forward pass;
//                  y = x * rstd * w gives dw_c = sum_r dy_rc x_rc rstd_r), and
//                  without SCALED a bias gradient (the column sums of dy).
//   OP_EMBEDDING   out[v, c] += sum over real tokens t with ids[t] = v of
//                  a[t, c]: the embedding table's gradient, a scatter-add
//                  written as a gather so that no two invocations write one
//                  element (WGSL has no f32 atomics) and the sums run in a fixed
//                  order (reproducible runs). Each invocation scans every token
//                  id: O(vocab * tokens) id reads, cheap for the small
//                  vocabularies full-parameter training here is meant for.
// One invocation per output element, which loops over the rows in order.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `out`: from out_base, accumulated into.
//   2  storage, read_write, array<f32> `a`: [rows, cols] from a_base.
//   3  storage, read_write, array<f32> `b`: OP_COLUMN_SUM with SCALED: x
//      [rows, cols] from b_base; OP_EMBEDDING: the token ids [rows] as u32 bits
//      from b_base.
//   4  storage, read_write, array<f32> `c`: OP_COLUMN_SUM with SCALED: rstd
//      [rows] from c_base; OP_EMBEDDING: the attention mask [rows] as u32 bits.
// a is only read, declared read_write so that it may share a buffer with out;
// b and c are read-only so that one placeholder can fill both when unused.
//
// Params (48 bytes, u32): n (output elements), rows, cols, out_base, a_base,
// b_base, c_base, vocab, then padding.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1; invocation flat_element over the 2-D grid
// (prelude.wgsl) handles output element i < n.
//
// Injected consts: WORKGROUP_SIZE: u32; OP: u32 (0 column sum, 1 embedding);
// SCALED: bool.

const OP_COLUMN_SUM = 0u;
const OP_EMBEDDING = 1u;

struct Params {
    n: u32, rows: u32, cols: u32, out_base: u32,
    a_base: u32, b_base: u32, c_base: u32, vocab: u32,
    pad0: u32, pad1: u32, pad2: u32, pad3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.n) {
        return;
    }
    var acc = 0.0;
    if (OP == OP_COLUMN_SUM) {
        for (var r = 0u; r < p.rows; r++) {
            let at = r * p.cols + i;
            if (SCALED) {
                acc += a[p.a_base + at] * b[p.b_base + at] * c[p.c_base + r];
            } else {
                acc += a[p.a_base + at];
            }
        }
    } else {
        let v = i / p.cols;
        let col = i - v * p.cols;
        for (var t = 0u; t < p.rows; t++) {
            if (bitcast<u32>(b[p.b_base + t]) == v && bitcast<u32>(c[p.c_base + t]) != 0u) {
                acc += a[p.a_base + t * p.cols + col];
            }
        }
    }
    out[p.out_base + i] += acc;
}
