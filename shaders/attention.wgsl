// attention.wgsl: causal grouped-query attention with a padding mask (Hugging
// Face LLaMA eager attention), forward and backward, in the online-softmax
// ("flash") form: no [S x S] score matrix is ever stored, only tiles of it in
// workgroup memory.
//
// Layouts (row-major f32; T = batch*seq token rows, sequence b owns rows
// b*seq .. b*seq+seq-1; hd = HEAD_DIM):
//   q, out, dout, dq   [T, heads*hd]     query head h in columns h*hd ..
//   k, v, dk, dv       [T, kv_heads*hd]  query head h reads kv head h / group,
//                                        group = heads / kv_heads
//   mask               [T] 4-byte words  attention_mask: a zero word is
//                                        padding, any other a real token, so
//                                        f32 1.0 and u32 1 both mean real
//   lse                [T, heads]        logsumexp of each row's scaled scores
//   dsum               [T, heads]        D = sum_u P dP per row and head, and
//                                        PADDING_D for rows whose mask is 0
// With scale = 1/sqrt(hd), query position i of a sequence attends key positions
// u <= i of the same sequence whose mask is nonzero:
//   s(i, u) = scale * q_i.k_u,  P = softmax_u(s),  out_i = sum_u P(i, u) v_u.
// Rows whose own mask is 0 (padding) get out = 0 and lse = 0 (finite, so they
// poison nothing downstream); in backward they contribute nothing and get
// dq = 0. Key rows that are padding get dk = dv = 0.
//
// Passes, chosen by the injected const PASS:
//   PASS_FORWARD (0)  out and lse from q, k, v, mask. Online softmax over key
//                     tiles: running max m, running sum l, unnormalised output.
//   PASS_DQ (1)       backward over query rows: with P = exp(s - lse) recomputed
//                     and dP = dout_i.v_u,
//                       D_i  = sum_u P dP  (= dout_i.out_i, the rowsum softmax
//                              backward needs; summing P dP is torch's own form
//                              and saves binding out),
//                       dq_i = scale * sum_u P (dP - D_i) k_u
//                            = scale * (sum_u P dP k_u - D_i sum_u P k_u),
//                     accumulated in one sweep as the two sums. Also writes D
//                     of its rows to dsum for PASS_DKDV.
//   PASS_DKDV (2)     backward over key rows, after PASS_DQ: for each key row u
//                     of kv head g, loop over the group's query heads and the
//                     query rows i >= u:
//                       dv_u = sum_{h,i} P dout_i,
//                       dk_u = scale * sum_{h,i} P (dP - D_i) q_i.
//                     One workgroup owns whole output rows, so there are no
//                     atomics and dk, dv are overwritten, not accumulated. It
//                     tells padding from dsum (PADDING_D) instead of the mask,
//                     which frees the binding dsum needs.
//
// Bindings (group 0). All passes bind all eight storage buffers (the layout comes
// from what `main` references, whatever the consts; eight is WebGPU's default
// maxStorageBuffersPerShaderStage), and a pass that ignores a read-only binding
// gets q bound there again:
//   0  uniform Params (below).
//   1  storage, read  `q`
//   2  storage, read  `k`
//   3  storage, read  `v`
//   4  storage, read  `row_flags`  FORWARD, DQ: mask; DKDV: dsum (f32 bits);
//                                  u32 so the mask's words are tested as bits:
//                                  no denormal flushing can turn u32 1 into 0
//   5  storage, read  `dout`       (unused by FORWARD)
//   6  storage, read  `lse_in`     DQ, DKDV: lse (unused by FORWARD)
//   7  storage, read_write `out_a` FORWARD: out; DQ: dq; DKDV: dk
//   8  storage, read_write `out_b` FORWARD: lse; DQ: dsum; DKDV: dv
// Each array is addressed from its own base element (Params), so tensors may sit
// at any 4-byte offset inside bindings that start at aligned offsets.
//
// Params (64 bytes, little-endian u32 unless noted):
//   offset 0   seq          positions per sequence
//   offset 4   heads        query heads
//   offset 8   kv_heads     key/value heads
//   offset 12  group        heads / kv_heads
//   offset 16  q_base       element index of q[0] in binding 1
//   offset 20  k_base       ... of k[0] in binding 2
//   offset 24  v_base       ... of v[0] in binding 3
//   offset 28  flags_base   ... of mask[0] or dsum[0] in binding 4
//   offset 32  dout_base    ... of dout[0] in binding 5
//   offset 36  lse_base     ... of lse[0] in binding 6
//   offset 40  out_a_base   ... of out[0], dq[0] or dk[0] in binding 7
//   offset 44  out_b_base   ... of lse[0], dsum[0] or dv[0] in binding 8
//   offset 48  scale (f32)  1/sqrt(hd)
//   offset 52  head_dim     HEAD_DIM again, and
//   offset 56  tile_rows    TILE_ROWS again, as the bounds of the loops over
//                           head dimensions and tile rows: run-time bounds keep
//                           compilers from unrolling them fully, which costs
//                           lavapipe seconds of compile time per variant and
//                           gains GPUs little (loops over DIMS_PER_LANE keep
//                           const bounds, so the accumulators stay registers)
//   offset 60  4 bytes of padding
//
// Workgroup: OWN_ROWS*LANES x 1 x 1 invocations. A workgroup owns OWN_ROWS
// consecutive positions of one sequence and one head: query rows of query head
// workgroup_id.y for FORWARD and DQ, key rows of kv head workgroup_id.y for DKDV;
// workgroup_id.x is the block of positions and workgroup_id.z the sequence, so
// the grid is (ceil(seq/OWN_ROWS), heads or kv_heads, batch). Invocation
// index li serves own row r = li / LANES as lane li % LANES. The owned rows are
// staged in workgroup memory once; the other side (keys for FORWARD and DQ,
// queries for DKDV) streams through it in tiles of TILE_ROWS rows, only as far
// as causality allows. For each tile:
//   1. all invocations stage the tile's rows (and whether each is a real
//      token, and for DKDV the queries' lse and D) in workgroup memory;
//   2. the lanes of row r compute the row's scores against the tile, lane l
//      taking tile rows l, l+LANES, ... (full hd-long dot products, all of a
//      lane's at once so that each owned element is loaded once for them);
//   3. each lane updates the head dimensions d = l, l+LANES, ... of its row's
//      accumulators from the whole tile's scores.
// Arrays in workgroup memory keep rows ROW_STRIDE = hd+1 floats apart so that
// the lanes of step 2, which read different rows at the same column, hit
// different banks.
//
// Injected consts:
//   PASS: u32       PASS_FORWARD, PASS_DQ or PASS_DKDV.
//   HEAD_DIM: u32   hd.
//   OWN_ROWS: u32   rows a workgroup owns.
//   TILE_ROWS: u32  rows per streamed tile.
//   LANES: u32      invocations per owned row.
// Workgroup memory is 4 bytes times
//   OWN_ROWS*ROW_STRIDE*(1 or 2) + 2*TILE_ROWS*ROW_STRIDE
//   + OWN_ROWS*TILE_ROWS*(1 or 2) + TILE_ROWS*(1 or 3)
// (the "or" terms for passes with a second owned array, second score array and
// per-query statistics); the host picks tiles that fit the device's limit.

const PASS_FORWARD = 0u;
const PASS_DQ = 1u;
const PASS_DKDV = 2u;

const WORKGROUP_SIZE = OWN_ROWS * LANES;
const ROW_STRIDE = HEAD_DIM + 1u;
// Head dimensions per lane; the last ones are absent when LANES does not
// divide HEAD_DIM.
const DIMS_PER_LANE = (HEAD_DIM + LANES - 1u) / LANES;

// Arrays a pass does not use shrink to one element.
const OWN_B_LEN = select(OWN_ROWS * ROW_STRIDE, 1u, PASS == PASS_FORWARD);
const SCORE_B_LEN = select(OWN_ROWS * TILE_ROWS, 1u, PASS == PASS_FORWARD);
const TILE_STATS_LEN = select(1u, TILE_ROWS, PASS == PASS_DKDV);

// A finite stand-in for the score of a masked pair and for the initial running
// max: -inf - -inf would be NaN, and the maximum of finite scores is never
// this low.
const NEG_BIG = -3.0e38;

// D of padding rows: no real D comes near it (|D| <= |dout| |out|), and unlike
// NaN it compares reliably.
const PADDING_D = 3.0e38;

struct Params {
    seq: u32, heads: u32, kv_heads: u32, group: u32,
    q_base: u32, k_base: u32, v_base: u32, flags_base: u32,
    dout_base: u32, lse_base: u32, out_a_base: u32, out_b_base: u32,
    scale: f32, head_dim: u32, tile_rows: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> row_flags: array<u32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> lse_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> out_a: array<f32>;
@group(0) @binding(8) var<storage, read_write> out_b: array<f32>;

// Owned rows: FORWARD and DQ: scale*q; DKDV: k.
var<workgroup> own_a: array<f32, OWN_ROWS * ROW_STRIDE>;
// Owned rows: DQ: dout; DKDV: v.
var<workgroup> own_b: array<f32, OWN_B_LEN>;
// Streamed tile: FORWARD and DQ: k; DKDV: scale*q.
var<workgroup> tile_a: array<f32, TILE_ROWS * ROW_STRIDE>;
// Streamed tile: FORWARD and DQ: v; DKDV: dout.
var<workgroup> tile_b: array<f32, TILE_ROWS * ROW_STRIDE>;
// 1 where the tile row is a real token inside the causal range, else 0.
var<workgroup> tile_real: array<f32, TILE_ROWS>;
// DKDV: lse and D of the tile's query rows.
var<workgroup> tile_lse: array<f32, TILE_STATS_LEN>;
var<workgroup> tile_d: array<f32, TILE_STATS_LEN>;
// [OWN_ROWS, TILE_ROWS] scores: FORWARD: s (NEG_BIG where masked); DQ, DKDV: P.
var<workgroup> score_a: array<f32, OWN_ROWS * TILE_ROWS>;
// DQ: P dP; DKDV: P (dP - D).
var<workgroup> score_b: array<f32, SCORE_B_LEN>;

// is_real reads the mask (FORWARD, DQ only).
fn is_real(token_row: u32) -> bool {
    return row_flags[p.flags_base + token_row] != 0u;
}

// dsum_at reads D of a row and head (DKDV only).
fn dsum_at(token_row: u32, h: u32) -> f32 {
    return bitcast<f32>(row_flags[p.flags_base + token_row * p.heads + h]);
}

// Tile rows a lane scores: lane, lane+LANES, ...; the last ones are absent
// (clamped to the last tile row, their scores unused) when LANES does not
// divide TILE_ROWS.
const COLS_PER_LANE = (TILE_ROWS + LANES - 1u) / LANES;

// lane_col is the tile row of a lane's j-th score.
fn lane_col(lane: u32, j: u32) -> u32 {
    return lane + j * LANES;
}

// The score-phase dot products of owned row r against all of a lane's tile
// rows at once: each owned element is loaded once for COLS_PER_LANE products
// (one load per FMA besides, not two), which is what workgroup-memory-bound
// adapters such as lavapipe pay for.
fn dots_own_a_tile_a(r: u32, lane: u32) -> array<f32, COLS_PER_LANE> {
    var acc: array<f32, COLS_PER_LANE>;
    for (var d = 0u; d < p.head_dim; d++) {
        let x = own_a[r * ROW_STRIDE + d];
        for (var j = 0u; j < COLS_PER_LANE; j++) {
            let c = min(lane_col(lane, j), TILE_ROWS - 1u);
            acc[j] += x * tile_a[c * ROW_STRIDE + d];
        }
    }
    return acc;
}

fn dots_own_b_tile_b(r: u32, lane: u32) -> array<f32, COLS_PER_LANE> {
    var acc: array<f32, COLS_PER_LANE>;
    for (var d = 0u; d < p.head_dim; d++) {
        let x = own_b[r * ROW_STRIDE + d];
        for (var j = 0u; j < COLS_PER_LANE; j++) {
            let c = min(lane_col(lane, j), TILE_ROWS - 1u);
            acc[j] += x * tile_b[c * ROW_STRIDE + d];
        }
    }
    return acc;
}

// stage_own_rows copies the owned rows at positions first.. (zeros past the end
// of the sequence) of head column offset col: own_a from a (times a_scale), and
// own_b from b unless FORWARD.
fn stage_own_rows(li: u32, row0: u32, first: u32, stride: u32, col: u32, a_scale: f32) {
    for (var i = li; i < OWN_ROWS * HEAD_DIM; i += WORKGROUP_SIZE) {
        let r = i / HEAD_DIM;
        let d = i % HEAD_DIM;
        let pos = first + r;
        var x = 0.0;
        var y = 0.0;
        if (pos < p.seq) {
            let at = (row0 + pos) * stride + col + d;
            if (PASS == PASS_DKDV) {
                x = k[p.k_base + at];
                y = v[p.v_base + at];
            } else {
                x = q[p.q_base + at] * a_scale;
                if (PASS == PASS_DQ) {
                    y = dout[p.dout_base + at];
                }
            }
        }
        own_a[r * ROW_STRIDE + d] = x;
        if (PASS != PASS_FORWARD) {
            own_b[r * ROW_STRIDE + d] = y;
        }
    }
}

// stage_key_tile copies key/value rows at positions first.. up to key_end
// (exclusive) of kv head column offset col into tile_a and tile_b, and marks
// which are real tokens.
fn stage_key_tile(li: u32, row0: u32, first: u32, key_end: u32, col: u32) {
    let stride = p.kv_heads * HEAD_DIM;
    for (var i = li; i < TILE_ROWS * HEAD_DIM; i += WORKGROUP_SIZE) {
        let c = i / HEAD_DIM;
        let d = i % HEAD_DIM;
        let pos = first + c;
        var x = 0.0;
        var y = 0.0;
        if (pos < key_end) {
            let at = (row0 + pos) * stride + col + d;
            x = k[p.k_base + at];
            y = v[p.v_base + at];
        }
        tile_a[c * ROW_STRIDE + d] = x;
        tile_b[c * ROW_STRIDE + d] = y;
    }
    for (var c = li; c < TILE_ROWS; c += WORKGROUP_SIZE) {
        let pos = first + c;
        tile_real[c] = select(0.0, 1.0, pos < key_end && is_real(row0 + pos));
    }
}

fn forward(block: u32, h: u32, b: u32, li: u32) {
    let r = li / LANES;
    let lane = li % LANES;
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let pos = first + r;
    let q_stride = p.heads * HEAD_DIM;
    let kv_col = (h / p.group) * HEAD_DIM;

    stage_own_rows(li, row0, first, q_stride, h * HEAD_DIM, p.scale);
    var row_real = false;
    if (pos < p.seq) {
        row_real = is_real(row0 + pos);
    }

    var run_max = NEG_BIG;
    var run_sum = 0.0;
    var acc: array<f32, DIMS_PER_LANE>;
    // Keys past the block's last row are in no owned row's causal range.
    let key_end = min(first + OWN_ROWS, p.seq);
    for (var first_key = 0u; first_key < key_end; first_key += TILE_ROWS) {
        // The previous tile's readers (and the owned rows' writers) are done.
        workgroupBarrier();
        stage_key_tile(li, row0, first_key, key_end, kv_col);
        workgroupBarrier();
        let dots = dots_own_a_tile_a(r, lane);
        for (var j = 0u; j < COLS_PER_LANE; j++) {
            let c = lane_col(lane, j);
            if (c >= TILE_ROWS) {
                break;
            }
            var s = NEG_BIG;
            if (row_real && tile_real[c] != 0.0 && first_key + c <= pos) {
                s = dots[j];
            }
            score_a[r * TILE_ROWS + c] = s;
        }
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var c = 0u; c < p.tile_rows; c++) {
            tile_max = max(tile_max, score_a[r * TILE_ROWS + c]);
        }
        let new_max = max(run_max, tile_max);
        let rescale = exp(run_max - new_max);
        run_sum *= rescale;
        for (var i = 0u; i < DIMS_PER_LANE; i++) {
            acc[i] *= rescale;
        }
        for (var c = 0u; c < p.tile_rows; c++) {
            let s = score_a[r * TILE_ROWS + c];
            if (s == NEG_BIG) {
                continue;
            }
            let prob = exp(s - new_max);
            run_sum += prob;
            for (var i = 0u; i < DIMS_PER_LANE; i++) {
                let d = lane + i * LANES;
                if (d < HEAD_DIM) {
                    acc[i] += prob * tile_b[c * ROW_STRIDE + d];
                }
            }
        }
        run_max = new_max;
    }

    if (pos >= p.seq) {
        return;
    }
    // A real row always sees itself, so run_sum >= 1 there.
    let real = row_real && run_sum > 0.0;
    let inv_sum = select(0.0, 1.0 / run_sum, real);
    let out_row = p.out_a_base + (row0 + pos) * q_stride + h * HEAD_DIM;
    for (var i = 0u; i < DIMS_PER_LANE; i++) {
        let d = lane + i * LANES;
        if (d < HEAD_DIM) {
            out_a[out_row + d] = select(0.0, acc[i] * inv_sum, real);
        }
    }
    if (lane == 0u) {
        out_b[p.out_b_base + (row0 + pos) * p.heads + h] = select(0.0, run_max + log(run_sum), real);
    }
}

fn query_gradients(block: u32, h: u32, b: u32, li: u32) {
    let r = li / LANES;
    let lane = li % LANES;
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let pos = first + r;
    let q_stride = p.heads * HEAD_DIM;
    let kv_col = (h / p.group) * HEAD_DIM;

    stage_own_rows(li, row0, first, q_stride, h * HEAD_DIM, p.scale);
    var row_real = false;
    var row_lse = 0.0;
    if (pos < p.seq) {
        row_real = is_real(row0 + pos);
        if (row_real) {
            row_lse = lse_in[p.lse_base + (row0 + pos) * p.heads + h];
        }
    }

    var sum_pdp = 0.0;                       // D
    var acc_pdp: array<f32, DIMS_PER_LANE>;  // sum_u P dP k_u
    var acc_p: array<f32, DIMS_PER_LANE>;    // sum_u P k_u
    let key_end = min(first + OWN_ROWS, p.seq);
    for (var first_key = 0u; first_key < key_end; first_key += TILE_ROWS) {
        workgroupBarrier();
        stage_key_tile(li, row0, first_key, key_end, kv_col);
        workgroupBarrier();
        let dots_s = dots_own_a_tile_a(r, lane);
        let dots_dp = dots_own_b_tile_b(r, lane);
        for (var j = 0u; j < COLS_PER_LANE; j++) {
            let c = lane_col(lane, j);
            if (c >= TILE_ROWS) {
                break;
            }
            var prob = 0.0;
            var prob_dp = 0.0;
            if (row_real && tile_real[c] != 0.0 && first_key + c <= pos) {
                prob = exp(dots_s[j] - row_lse);
                prob_dp = prob * dots_dp[j];
            }
            score_a[r * TILE_ROWS + c] = prob;
            score_b[r * TILE_ROWS + c] = prob_dp;
        }
        workgroupBarrier();
        for (var c = 0u; c < p.tile_rows; c++) {
            let prob = score_a[r * TILE_ROWS + c];
            let prob_dp = score_b[r * TILE_ROWS + c];
            sum_pdp += prob_dp;
            for (var i = 0u; i < DIMS_PER_LANE; i++) {
                let d = lane + i * LANES;
                if (d < HEAD_DIM) {
                    let key = tile_a[c * ROW_STRIDE + d];
                    acc_pdp[i] += prob_dp * key;
                    acc_p[i] += prob * key;
                }
            }
        }
    }

    if (pos >= p.seq) {
        return;
    }
    let row = row0 + pos;
    let dq_row = p.out_a_base + row * q_stride + h * HEAD_DIM;
    for (var i = 0u; i < DIMS_PER_LANE; i++) {
        let d = lane + i * LANES;
        if (d < HEAD_DIM) {
            out_a[dq_row + d] = select(0.0, p.scale * (acc_pdp[i] - sum_pdp * acc_p[i]), row_real);
        }
    }
    if (lane == 0u) {
        out_b[p.out_b_base + row * p.heads + h] = select(PADDING_D, sum_pdp, row_real);
    }
}

fn key_gradients(block: u32, g: u32, b: u32, li: u32) {
    let r = li / LANES;
    let lane = li % LANES;
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let pos = first + r;
    let q_stride = p.heads * HEAD_DIM;
    let kv_stride = p.kv_heads * HEAD_DIM;

    stage_own_rows(li, row0, first, kv_stride, g * HEAD_DIM, 1.0);
    var row_real = false;
    if (pos < p.seq) {
        // Padding is per token, so any head's D tells.
        row_real = dsum_at(row0 + pos, g * p.group) != PADDING_D;
    }

    var acc_dk: array<f32, DIMS_PER_LANE>;
    var acc_dv: array<f32, DIMS_PER_LANE>;
    for (var member = 0u; member < p.group; member++) {
        let h = g * p.group + member;
        // Queries before the block's first key see none of its keys.
        for (var first_query = first; first_query < p.seq; first_query += TILE_ROWS) {
            workgroupBarrier();
            for (var i = li; i < TILE_ROWS * HEAD_DIM; i += WORKGROUP_SIZE) {
                let c = i / HEAD_DIM;
                let d = i % HEAD_DIM;
                let query_pos = first_query + c;
                var x = 0.0;
                var y = 0.0;
                if (query_pos < p.seq) {
                    let at = (row0 + query_pos) * q_stride + h * HEAD_DIM + d;
                    x = q[p.q_base + at] * p.scale;
                    y = dout[p.dout_base + at];
                }
                tile_a[c * ROW_STRIDE + d] = x;
                tile_b[c * ROW_STRIDE + d] = y;
            }
            for (var c = li; c < TILE_ROWS; c += WORKGROUP_SIZE) {
                let query_pos = first_query + c;
                var real = false;
                var lse = 0.0;
                var dsum = 0.0;
                if (query_pos < p.seq) {
                    let row = row0 + query_pos;
                    dsum = dsum_at(row, h);
                    real = dsum != PADDING_D;
                    if (real) {
                        lse = lse_in[p.lse_base + row * p.heads + h];
                    } else {
                        dsum = 0.0;
                    }
                }
                tile_real[c] = select(0.0, 1.0, real);
                tile_lse[c] = lse;
                tile_d[c] = dsum;
            }
            workgroupBarrier();
            let dots_s = dots_own_a_tile_a(r, lane);
            let dots_dp = dots_own_b_tile_b(r, lane);
            for (var j = 0u; j < COLS_PER_LANE; j++) {
                let c = lane_col(lane, j);
                if (c >= TILE_ROWS) {
                    break;
                }
                var prob = 0.0;
                var dscore = 0.0;
                if (row_real && tile_real[c] != 0.0 && first_query + c >= pos) {
                    prob = exp(dots_s[j] - tile_lse[c]);
                    dscore = prob * (dots_dp[j] - tile_d[c]);
                }
                score_a[r * TILE_ROWS + c] = prob;
                score_b[r * TILE_ROWS + c] = dscore;
            }
            workgroupBarrier();
            for (var c = 0u; c < p.tile_rows; c++) {
                let prob = score_a[r * TILE_ROWS + c];
                let dscore = score_b[r * TILE_ROWS + c];
                for (var i = 0u; i < DIMS_PER_LANE; i++) {
                    let d = lane + i * LANES;
                    if (d < HEAD_DIM) {
                        acc_dv[i] += prob * tile_b[c * ROW_STRIDE + d];
                        acc_dk[i] += dscore * tile_a[c * ROW_STRIDE + d];
                    }
                }
            }
        }
    }

    if (pos >= p.seq) {
        return;
    }
    let at = (row0 + pos) * kv_stride + g * HEAD_DIM;
    for (var i = 0u; i < DIMS_PER_LANE; i++) {
        let d = lane + i * LANES;
        if (d < HEAD_DIM) {
            out_a[p.out_a_base + at + d] = select(0.0, acc_dk[i], row_real);
            out_b[p.out_b_base + at + d] = select(0.0, acc_dv[i], row_real);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) workgroup: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    if (PASS == PASS_FORWARD) {
        forward(workgroup.x, workgroup.y, workgroup.z, li);
    } else if (PASS == PASS_DQ) {
        query_gradients(workgroup.x, workgroup.y, workgroup.z, li);
    } else {
        key_gradients(workgroup.x, workgroup.y, workgroup.z, li);
    }
}
