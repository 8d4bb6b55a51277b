// linear_decode.wgsl: y = alpha * x W^T + beta * y for a handful of rows of x
// (generation's one new token, or a few), a matrix-vector product. The GEMM of
// gemm.wgsl tiles M by at least 32 rows, so with one row it does 32 times the
// work; here each weight element is read once and used for every row.
//
// Layouts (row-major; element offsets from the *_base params):
//   x  [rows, in_n] f32, row stride in_n
//   w  [out_n, in_n] f32 bits or, with W_BF16, bfloat16 packed two per u32
//      word (element e in the low half of word e/2 when e is even, the high
//      half when odd), as an HF weight [out, in]
//   y  [rows, ldy] f32: y[r, o] at y_base + r*ldy + o, o < out_n
// The kernel is compiled per row count ROWS, so no row is computed in vain.
//
// Workgroup: WORKGROUP_SIZE (a power of two) invocations compute OUTS
// consecutive outputs for all rows: invocation i sums k = i, i+WORKGROUP_SIZE,
// .. of each dot product (consecutive invocations read consecutive weights of
// a row), then a tree reduction in workgroup memory adds the partial sums.
// The grid is 2-D, (groups_x, ceil(out_n/OUTS / groups_x)): block
// wg.x + wg.y*groups_x owns outputs block*OUTS .. block*OUTS+OUTS-1.
//
// Bindings (group 0): 0 uniform Params; 1 x (read); 2 w: array<u32> (read);
// 3 y (read_write).
//
// Params (48 bytes, little-endian u32 unless noted):
//   offset 0   rows       ROWS again (unused; kept for the record)
//   offset 4   out_n
//   offset 8   in_n
//   offset 12  ldy
//   offset 16  x_base     element index of x[0] in binding 1
//   offset 20  w_base     element index of w[0] in binding 2 (bf16 halves with W_BF16)
//   offset 24  y_base     element index of y[0] in binding 3
//   offset 28  groups_x   the grid's x size
//   offset 32  alpha (f32)
//   offset 36  beta (f32) 0 overwrites y without reading it
//   offset 40  row_words  (AFFINE) words per weight row
//   offset 44  scale_off  (AFFINE) word of a row's first scale and bias
//
// With AFFINE, w is an affine-quantized weight (gpu.Affine, read with
// prelude.wgsl's load_affine): row o starts at word w_base + o*row_words.
//
// Injected consts: WORKGROUP_SIZE, OUTS, ROWS (u32); W_BF16, AFFINE (bool);
// AFFINE_BITS, AFFINE_GROUP, AFFINE_SCALES (u32).

struct Params {
    rows: u32, out_n: u32, in_n: u32, ldy: u32,
    x_base: u32, w_base: u32, y_base: u32, groups_x: u32,
    alpha: f32, beta: f32, row_words: u32, scale_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const SUMS = OUTS * ROWS; // dot products per workgroup, (output j, row r) at j*ROWS + r
var<workgroup> partial: array<f32, SUMS * WORKGROUP_SIZE>;

// weight_at is element (o, k) of the weight.
fn weight_at(o: u32, k: u32) -> f32 {
    if (AFFINE) {
        return load_affine(&w, p.w_base + o * p.row_words, p.scale_off, k, AFFINE_BITS, AFFINE_GROUP, AFFINE_SCALES);
    }
    return load_f32_or_bf16(&w, p.w_base + o * p.in_n + k, W_BF16);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) workgroup: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let first = (workgroup.x + workgroup.y * p.groups_x) * OUTS;
    var acc: array<f32, SUMS>;
    for (var k = li; k < p.in_n; k += WORKGROUP_SIZE) {
        var xs: array<f32, ROWS>;
        for (var r = 0u; r < ROWS; r++) {
            xs[r] = x[p.x_base + r * p.in_n + k];
        }
        for (var j = 0u; j < OUTS; j++) {
            let o = first + j;
            if (o < p.out_n) {
                let wv = weight_at(o, k);
                for (var r = 0u; r < ROWS; r++) {
                    acc[j * ROWS + r] += xs[r] * wv;
                }
            }
        }
    }
    for (var s = 0u; s < SUMS; s++) {
        partial[s * WORKGROUP_SIZE + li] = acc[s];
    }
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride /= 2u) {
        if (li < stride) {
            for (var s = 0u; s < SUMS; s++) {
                partial[s * WORKGROUP_SIZE + li] += partial[s * WORKGROUP_SIZE + li + stride];
            }
        }
        workgroupBarrier();
    }
    for (var s = li; s < SUMS; s += WORKGROUP_SIZE) {
        let o = first + s / ROWS;
        let r = s % ROWS;
        if (o < p.out_n) {
            let at = p.y_base + r * p.ldy + o;
            var value = p.alpha * partial[s * WORKGROUP_SIZE];
            if (p.beta != 0.0) {
                value += p.beta * y[at];
            }
            y[at] = value;
        }
    }
}
