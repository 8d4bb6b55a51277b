// embedding.wgsl: token embedding lookup, gathering rows of a frozen table
// [vocab, cols] into a row-major x [tokens, cols]:
//   x[t, c] = table[ids[t], c]
// A table larger than maxStorageBufferBindingSize is bound one block of rows at
// a time, one dispatch per block: the dispatch for rows
// [block_start, block_start + block_rows) writes the tokens whose id falls in it
// and leaves the others alone. Ids >= vocab (the host's data loader rejects
// them; this only keeps a bad id from reading out of bounds) get zeros, written
// by the dispatch with zero_invalid = 1, so every element of x is written by
// exactly one dispatch.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read, array<u32> `table`: the block's rows, element (v, c) of
//      the block at table_base + v*cols + c, as f32 bits, or with TABLE_BF16 as
//      bfloat16 packed two per word (element 2i in the low half; table_base then
//      counts halves).
//   2  storage, read_write, array<u32> `ids`: token t's id at ids_base + t, a u32
//      (the host stores ids as raw u32 bits in an f32-typed tensor). Only read;
//      declared read_write so that ids may share a buffer with x (WebGPU forbids
//      binding one buffer both read-only and writable in a dispatch).
//   3  storage, read_write, array<f32> `x`: element (t, c) at x_base + t*cols + c.
//
// Params (48 bytes, little-endian u32):
//   offset 0   n             tokens*cols
//   offset 4   cols          >= 1
//   offset 8   vocab         rows of the whole table
//   offset 12  block_start   first vocabulary row of this block
//   offset 16  block_rows    rows in this block
//   offset 20  table_base
//   offset 24  ids_base
//   offset 28  x_base
//   offset 32  zero_invalid  1: write zeros for ids >= vocab
//   offset 36  row_words     (AFFINE) words per table row
//   offset 40  scale_off     (AFFINE) word of a row's first scale and bias
//   offset 44  4 bytes of padding
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one element of x each: element
// i = flat_element over the 2-D grid (prelude.wgsl), t = i / cols,
// c = i mod cols; those with i >= n exit.
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.
//   TABLE_BF16: bool     the table is bf16 packed in u32 words (else f32 bits).
//   AFFINE: bool         the table is affine-quantized (gpu.Affine, read with
//                        prelude.wgsl's load_affine: row v of the block starts
//                        at word table_base + v*row_words, its scales and
//                        biases scale_off words further), with AFFINE_BITS,
//                        AFFINE_GROUP, AFFINE_SCALES: u32.

struct Params {
    n: u32, cols: u32, vocab: u32, block_start: u32,
    block_rows: u32, table_base: u32, ids_base: u32, x_base: u32,
    zero_invalid: u32, row_words: u32, scale_off: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

// table_at is element (v, c) of the block.
fn table_at(v: u32, c: u32) -> f32 {
    if (AFFINE) {
        return load_affine(&table, p.table_base + v * p.row_words, p.scale_off, c, AFFINE_BITS, AFFINE_GROUP, AFFINE_SCALES);
    }
    return load_f32_or_bf16(&table, p.table_base + v * p.cols + c, TABLE_BF16);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);
    if (i >= p.n) {
        return;
    }
    let t = i / p.cols;
    let c = i - t * p.cols;
    let id = ids[p.ids_base + t];
    // id - block_start wraps to a huge value for ids below the block, so one
    // comparison bounds both sides.
    let v = id - p.block_start;
    if (v < p.block_rows) {
        x[p.x_base + i] = table_at(v, c);
    } else if (p.zero_invalid != 0u && id >= p.vocab) {
        x[p.x_base + i] = 0.0;
    }
}
