// attention_decode.wgsl: attention of a few new query rows against a KV cache,
// for generation. Each new token costs one pass over the cached keys and
// values, O(context), instead of re-running the full-sequence kernel of
// attention.wgsl, O(context^2).
//
// Layouts (row-major f32; hd = HEAD_DIM, kv_stride = kv_heads*hd):
//   q, out   [rows, heads*hd]        query head h in columns h*hd ..; query
//                                    row r sits at position start + r
//   k, v     [>= start+rows, kv_stride]  the cache: row u holds the key/value
//                                    of position u (after RoPE for k); query
//                                    head h reads kv head h / group,
//                                    group = heads / kv_heads
// With scale = 1/sqrt(hd), query row r attends every cached position
// u <= start + r (causal; the cache holds no padding):
//   s(r, u) = scale * q_r.k_u,  P = softmax_u(s),  out_r = sum_u P(r, u) v_u.
// Rows of the cache past start + r are never read, so they may hold anything.
//
// Workgroup: WORKGROUP_SIZE (a power of two) x 1 x 1 invocations; grid
// (heads, rows, 1): one workgroup per query head and query row. The keys
// stream through in tiles of WORKGROUP_SIZE positions; for each tile:
//   1. scores: invocation i takes key tile0 + i (a full hd-long dot product
//      with the scaled query, staged once in workgroup memory);
//   2. the tile's maximum by workgroup_max (prelude.wgsl); the running
//      max m moves to max(m, tile max) and everything accumulated so far is
//      rescaled by exp(m_old - m_new) (the online softmax: no score is ever
//      exponentiated above the running max, so nothing overflows);
//   3. probabilities exp(s - m) of the tile in workgroup memory; each
//      invocation adds its own key's to a private running sum;
//   4. P V: invocations split as DIM_LANES lanes over head dims (consecutive
//      lanes read consecutive floats of a value row) times PARTS groups over
//      the tile's keys (key c goes to part c mod PARTS).
// At the end the private sums are reduced by a tree, the PARTS partial outputs
// are summed in workgroup memory, and out = acc / sum.
//
// Bindings (group 0):
//   0  uniform Params (below)
//   1  storage, read        q
//   2  storage, read        k (cache)
//   3  storage, read        v (cache)
//   4  storage, read_write  out
// Each array is addressed from its own base element, so tensors may sit at any
// 4-byte offset inside bindings that start at aligned offsets.
//
// Params (48 bytes, little-endian u32 unless noted):
//   offset 0   start      position of query row 0
//   offset 4   heads      query heads
//   offset 8   kv_heads   key/value heads
//   offset 12  group      heads / kv_heads
//   offset 16  q_base     element index of q[0] in binding 1
//   offset 20  k_base     ... of k[0] in binding 2
//   offset 24  v_base     ... of v[0] in binding 3
//   offset 28  out_base   ... of out[0] in binding 4
//   offset 32  scale (f32) 1/sqrt(hd)
//   offset 36  head_dim   HEAD_DIM again, as the run-time bound of the dot
//                         products (so compilers do not unroll them fully)
//   offset 40  8 bytes of padding
//
// Injected consts:
//   HEAD_DIM: u32        hd.
//   WORKGROUP_SIZE: u32  invocations per workgroup and keys per tile; a power
//                        of two for the tree reductions.

const NEG_BIG = -3.0e38; // initial running max and the score of absent keys
const DIM_LANES = min(HEAD_DIM, WORKGROUP_SIZE);
const PARTS = WORKGROUP_SIZE / DIM_LANES;
const DIMS_PER_LANE = (HEAD_DIM + DIM_LANES - 1u) / DIM_LANES;
const PART_STRIDE = DIM_LANES * DIMS_PER_LANE; // >= HEAD_DIM

struct Params {
    start: u32, heads: u32, kv_heads: u32, group: u32,
    q_base: u32, k_base: u32, v_base: u32, out_base: u32,
    scale: f32, head_dim: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> query: array<f32, HEAD_DIM>;        // scale * q of the row
var<workgroup> probs: array<f32, WORKGROUP_SIZE>;  // the tile's probabilities
var<workgroup> partial: array<f32, PARTS * PART_STRIDE>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) workgroup: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let h = workgroup.x;
    let r = workgroup.y;
    let hd = p.head_dim;
    let q_stride = p.heads * hd;
    let kv_stride = p.kv_heads * hd;
    let kv_col = (h / p.group) * hd;
    let keys = p.start + r + 1u;
    let row_at = r * q_stride + h * hd;

    for (var d = li; d < hd; d += WORKGROUP_SIZE) {
        query[d] = q[p.q_base + row_at + d] * p.scale;
    }
    workgroupBarrier();

    let lane = li % DIM_LANES;
    let part = li / DIM_LANES; // PARTS and beyond: idle in step 4
    var run_max = NEG_BIG;
    var run_sum = 0.0;
    var acc: array<f32, DIMS_PER_LANE>;
    for (var tile0 = 0u; tile0 < keys; tile0 += WORKGROUP_SIZE) {
        // 1. scores
        let key = tile0 + li;
        var score = NEG_BIG;
        if (key < keys) {
            let at = p.k_base + key * kv_stride + kv_col;
            var dot = 0.0;
            for (var e = 0u; e < hd; e++) {
                dot += query[e] * k[at + e];
            }
            score = dot;
        }
        // 2. the tile's max
        let new_max = max(run_max, workgroup_max(li, score));
        let rescale = exp(run_max - new_max);
        // 3. probabilities
        var prob = 0.0;
        if (key < keys) {
            prob = exp(score - new_max);
        }
        run_sum = run_sum * rescale + prob;
        probs[li] = prob;
        workgroupBarrier();
        // 4. P V
        let tile_keys = min(WORKGROUP_SIZE, keys - tile0);
        if (part < PARTS) {
            for (var i = 0u; i < DIMS_PER_LANE; i++) {
                acc[i] *= rescale;
            }
            for (var c = part; c < tile_keys; c += PARTS) {
                let pc = probs[c];
                let at = p.v_base + (tile0 + c) * kv_stride + kv_col;
                for (var i = 0u; i < DIMS_PER_LANE; i++) {
                    let d = lane + i * DIM_LANES;
                    if (d < hd) {
                        acc[i] += pc * v[at + d];
                    }
                }
            }
        }
        run_max = new_max;
        // The next tile overwrites reduce and probs.
        workgroupBarrier();
    }

    if (part < PARTS) {
        for (var i = 0u; i < DIMS_PER_LANE; i++) {
            partial[part * PART_STRIDE + i * DIM_LANES + lane] = acc[i];
        }
    }
    // The sum's barriers also publish partial. The key with the maximum score
    // contributes exp(0) = 1, so the sum is at least 1.
    let inv_sum = 1.0 / workgroup_sum(li, run_sum);
    for (var d = li; d < hd; d += WORKGROUP_SIZE) {
        var sum = 0.0;
        for (var part_i = 0u; part_i < PARTS; part_i++) {
            sum += partial[part_i * PART_STRIDE + d];
        }
        out[p.out_base + row_at + d] = sum * inv_sum;
    }
}
