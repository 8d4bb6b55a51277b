// cross_entropy.wgsl: the row-wise parts of the LM head's cross-entropy loss,
// applied to one vocabulary chunk of logits at a time so that no [rows x vocab]
// array ever exists (the logits of a chunk come from a GEMM the host records
// just before, into a reused [rows x ld] scratch array).
//
// Operations, chosen by the injected const OP:
//   OP_CHUNK_STATS (0)  forward, per chunk: online logsumexp. For each row r, with
//                       z = logits[r*ld + j], j < cols, the vocabulary columns
//                       col0 .. col0+cols-1:
//                         M_r = max(M_r, max_j z),
//                         S_r = S_r*exp(M_r_old - M_r) + sum_j exp(z - M_r),
//                       and when target[r] lies in the chunk, T_r = its logit.
//                       With first = 1 the old M_r, S_r are not read (the state
//                       may hold garbage); T_r is written only by the chunk that
//                       holds the target.
//   OP_FINISH (1)       forward, after the last chunk: for every row r,
//                         L_r = M_r + log(S_r) (the logsumexp),
//                         l_r = L_r - T_r for rows with a target, 0 otherwise,
//                       and the mean loss sum_r l_r * inv_count into state word
//                       MEAN. One workgroup strides over all rows, so the sum
//                       needs no second pass or atomics.
//   OP_GRAD (2)         backward, per chunk, in place on the recomputed logits:
//                         logits[r*ld + j] = (exp(z - L_r) - [col0+j == target[r]])
//                                            * inv_count
//                       for rows with a target, 0 for rows without: the gradient
//                       of the mean loss with respect to the chunk's logits.
// A row has no target when target[r] == NO_TARGET (0xFFFFFFFF).
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `logits`: the chunk's logits, row r at
//      logits_base + r*ld. Only OP_GRAD writes it; OP_FINISH ignores it.
//   2  storage, read_write, array<f32> `state`: five arrays of `rows` floats and
//      the mean, from state_base: M at 0, S at rows, T at 2*rows, L at 3*rows,
//      l at 4*rows, the mean at 5*rows (MEAN).
//   3  storage, read, array<u32> `targets`: target[r] at targets_base + r, a
//      vocabulary index or NO_TARGET.
// Every op binds all three because the bind group layout comes from what `main`
// references, whatever the consts.
//
// Params (32 bytes, little-endian u32 unless noted):
//   offset 0   rows          rows (tokens)
//   offset 4   cols          columns in this chunk (CHUNK_STATS, GRAD)
//   offset 8   ld            row stride of the logits array, >= cols
//   offset 12  col0          vocabulary index of the chunk's first column
//   offset 16  logits_base   element index of logits row 0 in binding 1
//   offset 20  state_base    element index of M_0 in binding 2
//   offset 24  targets_base  element index of target[0] in binding 3
//   offset 28  first (u32, CHUNK_STATS) or inv_count (f32 bits, FINISH, GRAD):
//              inv_count is 1/N for N targets in the batch (0 when N = 0), known
//              on the host, so the mean needs no read-back.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations. CHUNK_STATS and GRAD give
// workgroup g = flat_workgroup over the 2-D grid (prelude.wgsl) row g
// (workgroups past the last row exit); its invocations stride over the row's
// columns, and CHUNK_STATS combines their (max, sum) pairs in a tree in
// workgroup memory. FINISH runs one workgroup whose invocations stride over the
// rows and add their losses with workgroup_sum.
//
// Injected consts:
//   OP: u32              one of the OP_* values above.
//   WORKGROUP_SIZE: u32  invocations per workgroup; a power of two (the tree
//                        reductions halve it).

const OP_CHUNK_STATS = 0u;
const OP_FINISH = 1u;
const OP_GRAD = 2u;

const NO_TARGET = 0xFFFFFFFFu;

// A finite stand-in for -inf: exp(NEG_BIG - NEG_BIG) = 1 scales an empty sum of
// 0 harmlessly, where -inf - -inf would be NaN.
const NEG_BIG = -3.0e38;

// Offsets of the state arrays, in rows.
const STATE_MAX = 0u;
const STATE_SUM = 1u;
const STATE_TARGET_LOGIT = 2u;
const STATE_LSE = 3u;
const STATE_ROW_LOSS = 4u;
const STATE_MEAN = 5u;

struct Params {
    rows: u32,
    cols: u32,
    ld: u32,
    col0: u32,
    logits_base: u32,
    state_base: u32,
    targets_base: u32,
    extra: u32, // first (CHUNK_STATS) or inv_count bits (FINISH, GRAD)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<u32>;

var<workgroup> part_max: array<f32, WORKGROUP_SIZE>;
var<workgroup> part_sum: array<f32, WORKGROUP_SIZE>;

fn state_index(array_index: u32, row: u32) -> u32 {
    return p.state_base + array_index * p.rows + row;
}

// merge combines two (max, sum of exp(z - max)) pairs into one relative to the
// larger max.
fn merge(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2<f32> {
    let m = max(m1, m2);
    return vec2<f32>(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}

fn chunk_stats(row: u32, lane: u32) {
    let start = p.logits_base + row * p.ld;
    // One pass over the logits: each invocation keeps its own running max and
    // rescales its sum when the max grows.
    var m = NEG_BIG;
    var s = 0.0;
    for (var j = lane; j < p.cols; j += WORKGROUP_SIZE) {
        let z = logits[start + j];
        if (z > m) {
            s = s * exp(m - z) + 1.0;
            m = z;
        } else {
            s += exp(z - m);
        }
    }
    part_max[lane] = m;
    part_sum[lane] = s;
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lane < half) {
            let merged = merge(part_max[lane], part_sum[lane], part_max[lane + half], part_sum[lane + half]);
            part_max[lane] = merged.x;
            part_sum[lane] = merged.y;
        }
    }
    if (lane != 0u) {
        return;
    }
    var total = vec2<f32>(part_max[0], part_sum[0]);
    if (p.extra == 0u) {
        total = merge(state[state_index(STATE_MAX, row)], state[state_index(STATE_SUM, row)], total.x, total.y);
    }
    state[state_index(STATE_MAX, row)] = total.x;
    state[state_index(STATE_SUM, row)] = total.y;
    let target_index = targets[p.targets_base + row];
    // NO_TARGET is never in a chunk: col0 + cols <= vocab < NO_TARGET.
    if (target_index >= p.col0 && target_index - p.col0 < p.cols) {
        state[state_index(STATE_TARGET_LOGIT, row)] = logits[start + (target_index - p.col0)];
    }
}

fn finish(lane: u32) {
    let inv_count = bitcast<f32>(p.extra);
    var acc = 0.0;
    for (var row = lane; row < p.rows; row += WORKGROUP_SIZE) {
        let lse = state[state_index(STATE_MAX, row)] + log(state[state_index(STATE_SUM, row)]);
        var row_loss = 0.0;
        if (targets[p.targets_base + row] != NO_TARGET) {
            row_loss = lse - state[state_index(STATE_TARGET_LOGIT, row)];
        }
        state[state_index(STATE_LSE, row)] = lse;
        state[state_index(STATE_ROW_LOSS, row)] = row_loss;
        acc += row_loss;
    }
    let total = workgroup_sum(lane, acc);
    if (lane == 0u) {
        state[state_index(STATE_MEAN, 0u)] = total * inv_count;
    }
}

fn grad(row: u32, lane: u32) {
    let start = p.logits_base + row * p.ld;
    let target_index = targets[p.targets_base + row];
    if (target_index == NO_TARGET) {
        for (var j = lane; j < p.cols; j += WORKGROUP_SIZE) {
            logits[start + j] = 0.0;
        }
        return;
    }
    let inv_count = bitcast<f32>(p.extra);
    let lse = state[state_index(STATE_LSE, row)];
    for (var j = lane; j < p.cols; j += WORKGROUP_SIZE) {
        var g = exp(logits[start + j] - lse);
        if (p.col0 + j == target_index) {
            g -= 1.0;
        }
        logits[start + j] = g * inv_count;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    if (OP == OP_FINISH) {
        finish(lane);
        return;
    }
    let row = flat_workgroup(workgroup);
    // The whole workgroup leaves together, so no barrier is skipped by some
    // invocations only.
    if (row >= p.rows) {
        return;
    }
    if (OP == OP_CHUNK_STATS) {
        chunk_stats(row, lane);
    } else {
        grad(row, lane);
    }
}
