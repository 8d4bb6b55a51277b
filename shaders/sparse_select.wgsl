// sparse_select.wgsl: SparseLoRA's per-batch channel selection (SPEC 4.2-4.4),
// from the rank-r factors (x A B ~ x W^T) to sorted index lists, all on the GPU.
// The attention path's x A products run in gemm.wgsl; this family does the rest.
//
// The FFN path sums few terms that often nearly cancel (g or u of a channel can
// be 1/70 of the terms it adds, and the row means and xbar A cancel as well), so
// plain float32 sums there err by over 1e-5 relative (2e-5 on the llama-gqa
// fixture) and can swap close channels. The FFN ops therefore add with
// compensated (TwoSum) arithmetic, which carries each addition's rounding
// error along: what remains is the rounding of the products and of the stored
// intermediates. Params.unit (1.0, unknown to the compiler) guards the error
// terms against algebraic simplification, which would turn (a + b) - a into b
// and drop them. The attention norms add squares, which do not cancel.
//
// Operations, chosen by the injected const OP ("base" fields of Params locate
// each array's first element inside its binding; indices below are relative to
// them):
//   OP_MASKED_MEAN (0)    dst[b*width + h] = mean over s < seq of
//                         src[(b*seq + s)*width + h], over the real tokens
//                         (words_in[b*seq + s] != 0), or over every position when
//                         mode = 1 (the reference's unmasked mean). A row with no
//                         real token gives 0. b < rows, h < width; compensated.
//                         Grid: (ceil(width / WORKGROUP_SIZE), rows).
//   OP_ROW_PROJECT (1)    dst[b*RANK + a] = sum_h src[b*width + h] * factor_a[h*RANK + a]
//                         (xbar A for xbar [rows, width], A [width, RANK]): one
//                         workgroup per output, its invocations stride over h,
//                         then merge their compensated sums in a tree.
//                         Grid: (RANK, rows).
//   OP_COLUMN_SUMSQ (2)   The squared column norms of Z B over real tokens, in
//                         partial sums per chunk of CHUNK_TOKENS tokens:
//                         dst[c*n + j] = sum over real t in chunk c of
//                         (sum_a src[t*RANK + a] * factor_a[a*n + j])^2,
//                         with Z = src [tokens, RANK] (= x A), B = factor_a
//                         [RANK, n] and the mask in words_in. Padding tokens add 0.
//                         Terms are squares, so plain sums are accurate here.
//                         Grid: (ceil(n / WORKGROUP_SIZE), ceil(tokens / CHUNK_TOKENS)).
//   OP_FFN_SCORES (3)     dst[j] = sqrt(sum_b h[b, j]^2), h = SiLU(g) * u,
//                         g[b, j] = sum_a src[b*RANK + a] * factor_a[a*n + j],
//                         u[b, j] = sum_a src[src2 + b*RANK + a] * factor_b[a*n + j]
//                         (src holds the gate's xbar A_g at src_base and the up
//                         projection's xbar A_u at src2_base, both [rows, RANK]);
//                         g and u compensated. Grid: (ceil(n / WORKGROUP_SIZE), 1).
//   OP_ATTN_SCORES (4)    For each of the n = KV*hd kv channels c = kvh*hd + e:
//                         nk = sqrt(sum over the `chunks` partials of k),
//                         nv likewise, nq[j] likewise for query channels;
//                         qbar = mean over g < group of nq[q(c, g)] with
//                         q(c, g) = (kvh*group + g)*hd + e (SPEC 4.3), or
//                         q(c, g) = g*n + c when mode = 1 (the reference's GQA
//                         pairing of query channel j with kv channel j mod n);
//                         dst[c] = qbar * nk, dst[dst2 + c] = nv.
//                         src holds the partials of q ([chunks, width]) at
//                         src_base, of k and v ([chunks, n]) at src2_base and
//                         src3_base, as OP_COLUMN_SUMSQ wrote them.
//                         Grid: (ceil(n / WORKGROUP_SIZE), 1).
//   OP_RANK (5)           words_out[i] = 1 if channel i is among the k best of the
//                         n scores src[0..n), else 0. Channel i's rank is the
//                         number of channels j with a higher score, or an equal
//                         score and j < i: ties go to the lower index, ranks are a
//                         permutation of 0..n-1, and exactly min(k, n) channels
//                         are kept. Scores compare as the u32 bits of non-negative
//                         floats (which order like the floats); a negative or NaN
//                         score counts as 0. Each workgroup ranks WORKGROUP_SIZE
//                         channels against all n, a tile of WORKGROUP_SIZE scores
//                         at a time through workgroup memory: O(n^2) comparisons.
//                         Grid: (ceil(n / WORKGROUP_SIZE), 1).
//   OP_COMPACT (6)        One workgroup writes the index list
//                         words_out[0] = count, words_out[1..] = the j < n with
//                         words_in[map(j)] != 0, ascending, where map is set by
//                         mode: MAP_IDENTITY (0) j; MAP_GQA (1) the kv channel
//                         that query (or attention-output) channel j belongs to,
//                         (j / (group*hd))*hd + j % hd; MAP_GROUP_MAJOR (2)
//                         j / group, the reference's q list k*group + g. Each
//                         invocation counts a contiguous run of ceil(n /
//                         WORKGROUP_SIZE) channels, a workgroup prefix sum gives
//                         each run its first list slot. Grid: (1, 1).
//
// Bindings (group 0); every op binds all of them because the bind group layout
// comes from what `main` references, whatever OP is; the caller binds a
// placeholder buffer where an op does not use one:
//   0  uniform Params (below).
//   1  storage, read, array<f32> `src`: x, row means, Z, partial sums or scores.
//   2  storage, read, array<f32> `factor_a`: A (OP_ROW_PROJECT), else B of the
//      projection (B_gate for OP_FFN_SCORES).
//   3  storage, read, array<f32> `factor_b`: B_up (OP_FFN_SCORES only).
//   4  storage, read, array<u32> `words_in`: the token mask (u32 words, 1 = real
//      token) or the keep flags of OP_RANK.
//   5  storage, read_write, array<f32> `dst`: float outputs.
//   6  storage, read_write, array<u32> `words_out`: keep flags or an index list.
//
// Params (80 bytes, little-endian u32 words in this order):
//   n          channels the op writes or ranks
//   rows       OP_MASKED_MEAN, OP_ROW_PROJECT, OP_FFN_SCORES: sequences
//   seq        OP_MASKED_MEAN: positions per sequence
//   width      OP_MASKED_MEAN, OP_ROW_PROJECT: hidden size;
//              OP_ATTN_SCORES: query channels
//   tokens     OP_COLUMN_SUMSQ: tokens (rows of Z)
//   chunks     OP_ATTN_SCORES: partial sums per channel
//   k          OP_RANK: channels to keep
//   group      OP_ATTN_SCORES, OP_COMPACT: query heads per kv head
//   head_dim   OP_ATTN_SCORES, OP_COMPACT: channels per head
//   mode       per op, see above
//   src_base, src2_base, src3_base, factor_a_base, factor_b_base,
//   words_in_base, dst_base, dst2_base, words_out_base
//              element index of each array's first element in its binding
//   unit       f32 1.0 (see above)
// The bases let tensors sit at any 4-byte offset although storage bindings must
// start at multiples of minStorageBufferOffsetAlignment.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations; invocation `lane` of workgroup
// (x, y) handles channel (or hidden index) x*WORKGROUP_SIZE + lane; y is the
// sequence (OP_MASKED_MEAN) or the token chunk (OP_COLUMN_SUMSQ). OP_ROW_PROJECT
// and OP_COMPACT use whole workgroups as described above.
//
// Injected consts:
//   OP: u32              one of the OP_* values above.
//   WORKGROUP_SIZE: u32  invocations per workgroup; a power of two (the prefix
//                        sum and the tree merge step by powers of two).
//   RANK: u32            the factors' rank r (OP_ROW_PROJECT, OP_COLUMN_SUMSQ,
//                        OP_FFN_SCORES); an invocation keeps its column of B in
//                        registers.
//   TILE_TOKENS: u32     rows of Z staged in workgroup memory at a time by
//                        OP_COLUMN_SUMSQ (TILE_TOKENS*RANK floats); divides
//                        CHUNK_TOKENS.
//   CHUNK_TOKENS: u32    tokens per partial sum of OP_COLUMN_SUMSQ.

const OP_MASKED_MEAN = 0u;
const OP_ROW_PROJECT = 1u;
const OP_COLUMN_SUMSQ = 2u;
const OP_FFN_SCORES = 3u;
const OP_ATTN_SCORES = 4u;
const OP_RANK = 5u;
const OP_COMPACT = 6u;

const MAP_IDENTITY = 0u;
const MAP_GQA = 1u;
const MAP_GROUP_MAJOR = 2u;

struct Params {
    n: u32, rows: u32, seq: u32, width: u32,
    tokens: u32, chunks: u32, k: u32, group: u32,
    head_dim: u32, mode: u32, src_base: u32, src2_base: u32,
    src3_base: u32, factor_a_base: u32, factor_b_base: u32, words_in_base: u32,
    dst_base: u32, dst2_base: u32, words_out_base: u32, unit: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> factor_a: array<f32>;
@group(0) @binding(3) var<storage, read> factor_b: array<f32>;
@group(0) @binding(4) var<storage, read> words_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;
@group(0) @binding(6) var<storage, read_write> words_out: array<u32>;

// Z rows staged by OP_COLUMN_SUMSQ, padding tokens zeroed.
var<workgroup> z_tile: array<f32, TILE_TOKENS * RANK>;
// Score keys of one tile (OP_RANK) or run counts to prefix-sum (OP_COMPACT).
var<workgroup> shared_words: array<u32, WORKGROUP_SIZE>;
// Compensated partial sums merged by OP_ROW_PROJECT.
var<workgroup> shared_sums: array<vec2<f32>, WORKGROUP_SIZE>;

// A compensated sum is vec2(sum, accumulated rounding error): its value is
// x + y, far more accurate than x alone.
fn compensated_add(acc: vec2<f32>, v: f32) -> vec2<f32> {
    // Knuth's TwoSum: s + err == acc.x + v exactly. Multiplying by p.unit hides
    // from the compiler that s - acc.x recovers v up to rounding.
    let s = (acc.x + v) * p.unit;
    let v_part = (s - acc.x) * p.unit;
    let err = (acc.x - (s - v_part)) + (v - v_part);
    return vec2(s, acc.y + err);
}

fn compensated_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let sum = compensated_add(a, b.x);
    return vec2(sum.x, sum.y + b.y);
}

fn is_real(token: u32) -> bool {
    return words_in[p.words_in_base + token] != 0u;
}

fn masked_mean(h: u32, b: u32) {
    if (h >= p.width || b >= p.rows) {
        return;
    }
    var sum = vec2(0.0);
    var count = 0u;
    for (var s = 0u; s < p.seq; s++) {
        let t = b * p.seq + s;
        if (p.mode == 1u || is_real(t)) {
            sum = compensated_add(sum, src[p.src_base + t * p.width + h]);
            count++;
        }
    }
    var mean = 0.0;
    if (count > 0u) {
        mean = (sum.x + sum.y) / f32(count);
    }
    dst[p.dst_base + b * p.width + h] = mean;
}

// row_project has workgroup barriers: every invocation runs it whole.
fn row_project(a: u32, b: u32, lane: u32) {
    var sum = vec2(0.0);
    for (var h = lane; h < p.width; h += WORKGROUP_SIZE) {
        sum = compensated_add(sum, src[p.src_base + b * p.width + h] * factor_a[p.factor_a_base + h * RANK + a]);
    }
    shared_sums[lane] = sum;
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lane < half) {
            shared_sums[lane] = compensated_merge(shared_sums[lane], shared_sums[lane + half]);
        }
    }
    if (lane == 0u && b < p.rows) {
        let total = shared_sums[0];
        dst[p.dst_base + b * RANK + a] = total.x + total.y;
    }
}

// column_sumsq has workgroup barriers: every invocation runs it whole.
fn column_sumsq(j: u32, chunk: u32, lane: u32) {
    let begin = chunk * CHUNK_TOKENS;
    let end = min(begin + CHUNK_TOKENS, p.tokens);
    let in_range = j < p.n;
    var column: array<f32, RANK>;
    if (in_range) {
        for (var a = 0u; a < RANK; a++) {
            column[a] = factor_a[p.factor_a_base + a * p.n + j];
        }
    }
    var acc = 0.0;
    for (var t0 = begin; t0 < end; t0 += TILE_TOKENS) {
        for (var i = lane; i < TILE_TOKENS * RANK; i += WORKGROUP_SIZE) {
            let t = t0 + i / RANK;
            var v = 0.0;
            if (t < end && is_real(t)) {
                v = src[p.src_base + t * RANK + i % RANK];
            }
            z_tile[i] = v;
        }
        workgroupBarrier();
        if (in_range) {
            let rows = min(TILE_TOKENS, end - t0);
            for (var r = 0u; r < rows; r++) {
                var d = 0.0;
                for (var a = 0u; a < RANK; a++) {
                    d += z_tile[r * RANK + a] * column[a];
                }
                acc += d * d;
            }
        }
        workgroupBarrier();
    }
    if (in_range) {
        dst[p.dst_base + chunk * p.n + j] = acc;
    }
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

fn ffn_scores(j: u32) {
    if (j >= p.n) {
        return;
    }
    var gate_column: array<f32, RANK>;
    var up_column: array<f32, RANK>;
    for (var a = 0u; a < RANK; a++) {
        gate_column[a] = factor_a[p.factor_a_base + a * p.n + j];
        up_column[a] = factor_b[p.factor_b_base + a * p.n + j];
    }
    var acc = 0.0;
    for (var b = 0u; b < p.rows; b++) {
        var g = vec2(0.0);
        var u = vec2(0.0);
        for (var a = 0u; a < RANK; a++) {
            g = compensated_add(g, src[p.src_base + b * RANK + a] * gate_column[a]);
            u = compensated_add(u, src[p.src2_base + b * RANK + a] * up_column[a]);
        }
        let h = silu(g.x + g.y) * (u.x + u.y);
        acc += h * h;
    }
    dst[p.dst_base + j] = sqrt(acc);
}

// column_norm sums the partials of channel j of an [chunks, n] block at base.
fn column_norm(base: u32, n: u32, j: u32) -> f32 {
    var sum = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        sum += src[base + c * n + j];
    }
    return sqrt(sum);
}

fn attn_scores(c: u32) {
    if (c >= p.n) {
        return;
    }
    let kv_head = c / p.head_dim;
    let e = c % p.head_dim;
    var q_sum = 0.0;
    for (var g = 0u; g < p.group; g++) {
        var q = (kv_head * p.group + g) * p.head_dim + e;
        if (p.mode == 1u) {
            q = g * p.n + c;
        }
        q_sum += column_norm(p.src_base, p.width, q);
    }
    let q_mean = q_sum / f32(p.group);
    dst[p.dst_base + c] = q_mean * column_norm(p.src2_base, p.n, c);
    dst[p.dst2_base + c] = column_norm(p.src3_base, p.n, c);
}

// score_key orders non-negative scores as u32 bits; others rank as zero.
fn score_key(i: u32) -> u32 {
    let bits = bitcast<u32>(src[p.src_base + i]);
    if (bits > 0x7f800000u) {
        return 0u;
    }
    return bits;
}

// rank_channels has workgroup barriers: every invocation runs it whole.
fn rank_channels(i: u32, lane: u32) {
    let in_range = i < p.n;
    var mine = 0u;
    if (in_range) {
        mine = score_key(i);
    }
    var rank = 0u;
    for (var t0 = 0u; t0 < p.n; t0 += WORKGROUP_SIZE) {
        let j = t0 + lane;
        var key = 0u;
        if (j < p.n) {
            key = score_key(j);
        }
        shared_words[lane] = key;
        workgroupBarrier();
        if (in_range) {
            let count = min(WORKGROUP_SIZE, p.n - t0);
            for (var l = 0u; l < count; l++) {
                let other = shared_words[l];
                if (other > mine || (other == mine && t0 + l < i)) {
                    rank++;
                }
            }
        }
        workgroupBarrier();
    }
    if (in_range) {
        words_out[p.words_out_base + i] = select(0u, 1u, rank < p.k);
    }
}

fn flag_source(j: u32) -> u32 {
    if (p.mode == MAP_GQA) {
        return (j / (p.group * p.head_dim)) * p.head_dim + j % p.head_dim;
    }
    if (p.mode == MAP_GROUP_MAJOR) {
        return j / p.group;
    }
    return j;
}

fn kept(j: u32) -> bool {
    return words_in[p.words_in_base + flag_source(j)] != 0u;
}

// compact runs in a single workgroup and has barriers.
fn compact(lane: u32) {
    let run = (p.n + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    let begin = min(lane * run, p.n);
    let end = min(begin + run, p.n);
    var count = 0u;
    for (var j = begin; j < end; j++) {
        if (kept(j)) {
            count++;
        }
    }
    // Inclusive Hillis-Steele scan of the run counts.
    shared_words[lane] = count;
    workgroupBarrier();
    for (var stride = 1u; stride < WORKGROUP_SIZE; stride *= 2u) {
        var add = 0u;
        if (lane >= stride) {
            add = shared_words[lane - stride];
        }
        workgroupBarrier();
        shared_words[lane] += add;
        workgroupBarrier();
    }
    var slot = shared_words[lane] - count;
    for (var j = begin; j < end; j++) {
        if (kept(j)) {
            words_out[p.words_out_base + 1u + slot] = j;
            slot++;
        }
    }
    if (lane == WORKGROUP_SIZE - 1u) {
        words_out[p.words_out_base] = shared_words[lane];
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) workgroup: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
    let index = workgroup.x * WORKGROUP_SIZE + lane;
    if (OP == OP_MASKED_MEAN) {
        masked_mean(index, workgroup.y);
    } else if (OP == OP_ROW_PROJECT) {
        row_project(workgroup.x, workgroup.y, lane);
    } else if (OP == OP_COLUMN_SUMSQ) {
        column_sumsq(index, workgroup.y, lane);
    } else if (OP == OP_FFN_SCORES) {
        ffn_scores(index);
    } else if (OP == OP_ATTN_SCORES) {
        attn_scores(index);
    } else if (OP == OP_RANK) {
        rank_channels(index, lane);
    } else {
        compact(lane);
    }
}
