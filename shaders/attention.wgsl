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
//   dsum               [T, heads]        D = rowsum(dout * out) per row and
//                                        head, PADDING_D for rows whose mask
//                                        is 0 (attention_dsum.wgsl)
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
//   PASS_DQ (1)       backward over query rows, after attention_dsum.wgsl:
//                     with P = exp(s - lse) recomputed and dP = dout_i.v_u,
//                       dq_i = scale * sum_u P (dP - D_i) k_u.
//   PASS_DKDV (2)     backward over key rows: for each key row u of kv head g,
//                     loop over the group's query heads and the query rows
//                     i >= u:
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
//   8  storage, read_write `out_b` FORWARD: lse; DQ: dsum (only read: the
//                                  binding that was free); DKDV: dv
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
//   offset 52  head_dim     HEAD_DIM again, as the bound of the score phase's
//                           loop over head dimensions: a run-time bound keeps
//                           compilers from unrolling it fully, which costs
//                           lavapipe seconds of compile time per variant (loops
//                           over OWN_ROWS and DIMS keep const bounds, so their
//                           accumulators stay registers)
//   offset 56  8 bytes of padding
//
// Workgroup: TILE_ROWS x 1 x 1 invocations. A workgroup owns OWN_ROWS
// consecutive positions of one sequence and one head: query rows of query head
// workgroup_id.y for FORWARD and DQ, key rows of kv head workgroup_id.y for DKDV;
// workgroup_id.x is the block of positions and workgroup_id.z the sequence, so
// the grid is (ceil(seq/OWN_ROWS), heads or kv_heads, batch). The owned rows
// are staged in workgroup memory once; the other side (keys for FORWARD and DQ,
// queries for DKDV) streams past in tiles of TILE_ROWS rows, only as far as
// causality allows, read straight from storage: each element of a tile is read
// by one invocation once. For each tile:
//   1. score phase: invocation c takes tile row c and computes its dot products
//      with every owned row (OWN_ROWS of them, two sets for the backward
//      passes), then writes the column c of the [OWN_ROWS, TILE_ROWS] score
//      tile (masked, exponentiated as the pass needs);
//   2. FORWARD only, softmax step: SPLIT = TILE_ROWS / OWN_ROWS invocations per
//      owned row find the tile's row max from partial maxima, rescale, and turn
//      scores into P in place;
//   3. accumulate phase: invocation c takes head dimensions c, c+TILE_ROWS, ...
//      of every owned row's accumulators and adds the tile rows weighted by
//      the score tile.
// In both phases every FMA reads one operand at an address that is the same for
// all invocations (an owned row's element, a score), which CPU adapters such as
// lavapipe load once and broadcast across their SIMD lanes, and one that the
// invocation has in a register (its tile row's element, loaded once for
// OWN_ROWS FMAs). The hot loops sit in uniform control flow so that stays true.
//
// Injected consts:
//   PASS: u32       PASS_FORWARD, PASS_DQ or PASS_DKDV.
//   HEAD_DIM: u32   hd.
//   OWN_ROWS: u32   rows a workgroup owns, at most TILE_ROWS.
//   TILE_ROWS: u32  rows per streamed tile, and invocations per workgroup.
// Workgroup memory is 4 bytes times
//   OWN_ROWS*HEAD_DIM*(1 or 2) + OWN_ROWS*TILE_ROWS*(1 or 2)
//   + OWN_ROWS*(1, 2 or 3) + (TILE_ROWS for FORWARD)
// (see the arrays below); the host picks tiles that fit the device's limit.

const PASS_FORWARD = 0u;
const PASS_DQ = 1u;
const PASS_DKDV = 2u;

const WORKGROUP_SIZE = TILE_ROWS;
// Head dimensions per invocation in the accumulate phase; the last ones are
// clamped duplicates (never written) when TILE_ROWS does not divide HEAD_DIM.
const DIMS = (HEAD_DIM + TILE_ROWS - 1u) / TILE_ROWS;
// FORWARD: invocations per owned row in the softmax step (the host keeps
// OWN_ROWS <= TILE_ROWS); the last TILE_ROWS % OWN_ROWS invocations only
// watch.
const SPLIT = TILE_ROWS / OWN_ROWS;

// Arrays a pass does not use shrink to one element.
const OWN_B_LEN = select(OWN_ROWS * HEAD_DIM, 1u, PASS == PASS_FORWARD);
const SCORE_B_LEN = select(1u, OWN_ROWS * TILE_ROWS, PASS == PASS_DKDV);
const DQ_ROWS_LEN = select(1u, OWN_ROWS, PASS == PASS_DQ);
const FORWARD_ROWS_LEN = select(1u, OWN_ROWS, PASS == PASS_FORWARD);
const PARTIAL_LEN = select(1u, TILE_ROWS, PASS == PASS_FORWARD);

// A finite stand-in for the score of a masked pair and for the initial running
// max: -inf - -inf would be NaN, and the maximum of finite scores is never
// this low.
const NEG_BIG = -3.0e38;

// D of padding rows (attention_dsum.wgsl writes it): no real D comes near it
// (|D| <= |dout| |out|), and unlike NaN it compares reliably.
const PADDING_D = 3.0e38;

struct Params {
    seq: u32, heads: u32, kv_heads: u32, group: u32,
    q_base: u32, k_base: u32, v_base: u32, flags_base: u32,
    dout_base: u32, lse_base: u32, out_a_base: u32, out_b_base: u32,
    scale: f32, head_dim: u32, pad0: u32, pad1: u32,
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

// Owned rows [OWN_ROWS, HEAD_DIM]: FORWARD and DQ: scale*q; DKDV: k.
var<workgroup> own_a: array<f32, OWN_ROWS * HEAD_DIM>;
// Owned rows: DQ: dout; DKDV: v.
var<workgroup> own_b: array<f32, OWN_B_LEN>;
// 1 where the owned row is a real token, 0 for padding and past the sequence.
var<workgroup> own_real: array<f32, OWN_ROWS>;
// DQ: lse and D of the owned rows.
var<workgroup> own_lse: array<f32, DQ_ROWS_LEN>;
var<workgroup> own_d: array<f32, DQ_ROWS_LEN>;
// FORWARD: the tile's rescale factor of each owned row; at the end 1/sum.
var<workgroup> row_scale: array<f32, FORWARD_ROWS_LEN>;
// FORWARD: per-invocation partial maxima and sums of the softmax step.
var<workgroup> partial: array<f32, PARTIAL_LEN>;
// [OWN_ROWS, TILE_ROWS]: FORWARD: s (NEG_BIG where masked), then P;
// DQ: dS = P (dP - D); DKDV: P.
var<workgroup> score_a: array<f32, OWN_ROWS * TILE_ROWS>;
// DKDV: dS = P (dP - D).
var<workgroup> score_b: array<f32, SCORE_B_LEN>;

// is_real reads the mask (FORWARD, DQ only).
fn is_real(token_row: u32) -> bool {
    return row_flags[p.flags_base + token_row] != 0u;
}

// dsum_at reads D of a row and head (DKDV only).
fn dsum_at(token_row: u32, h: u32) -> f32 {
    return bitcast<f32>(row_flags[p.flags_base + token_row * p.heads + h]);
}

// lane_dim is the head dimension of an invocation's i-th accumulator column,
// clamped to the last one past the end.
fn lane_dim(li: u32, i: u32) -> u32 {
    return min(li + i * TILE_ROWS, HEAD_DIM - 1u);
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
        own_a[r * HEAD_DIM + d] = x;
        if (PASS != PASS_FORWARD) {
            own_b[r * HEAD_DIM + d] = y;
        }
    }
}

// dots_own_a_k returns the dot products of every owned row of own_a with the
// key row of k from element at: the invocation's column of the score tile.
fn dots_own_a_k(at: u32) -> array<f32, OWN_ROWS> {
    var acc: array<f32, OWN_ROWS>;
    for (var d = 0u; d < p.head_dim; d++) {
        let x = k[at + d];
        for (var r = 0u; r < OWN_ROWS; r++) {
            acc[r] += own_a[r * HEAD_DIM + d] * x;
        }
    }
    return acc;
}

fn forward(block: u32, h: u32, b: u32, li: u32) {
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let q_stride = p.heads * HEAD_DIM;
    let kv_stride = p.kv_heads * HEAD_DIM;
    let kv_col = (h / p.group) * HEAD_DIM;

    stage_own_rows(li, row0, first, q_stride, h * HEAD_DIM, p.scale);
    for (var r = li; r < OWN_ROWS; r += WORKGROUP_SIZE) {
        let pos = first + r;
        own_real[r] = select(0.0, 1.0, pos < p.seq && is_real(row0 + min(pos, p.seq - 1u)));
    }
    // The invocation's part of the softmax step: row soft_row, tile columns
    // soft_part, soft_part+SPLIT, ...
    let soft_row = min(li / SPLIT, OWN_ROWS - 1u);
    let soft_part = li % SPLIT;
    let soft_owner = li < OWN_ROWS * SPLIT;

    var run_max = NEG_BIG;  // of row soft_row
    var run_sum = 0.0;      // of row soft_row, over this invocation's columns
    var acc: array<f32, OWN_ROWS * DIMS>;
    // Keys past the block's last row are in no owned row's causal range.
    let key_end = min(first + OWN_ROWS, p.seq);
    for (var first_key = 0u; first_key < key_end; first_key += TILE_ROWS) {
        // The previous tile's readers of score_a (and the stagers) are done.
        workgroupBarrier();
        // Score phase: this invocation's key column against every owned row.
        let key = first_key + li;
        let key_row = row0 + min(key, key_end - 1u);
        let key_ok = key < key_end && is_real(key_row);
        let s = dots_own_a_k(p.k_base + key_row * kv_stride + kv_col);
        for (var r = 0u; r < OWN_ROWS; r++) {
            let ok = key_ok && key <= first + r && own_real[r] != 0.0;
            score_a[r * TILE_ROWS + li] = select(NEG_BIG, s[r], ok);
        }
        workgroupBarrier();
        // Softmax step: the tile's max of each row from SPLIT partial maxima,
        // then P = exp(s - new max) in place.
        var part_max = NEG_BIG;
        for (var c = soft_part; c < TILE_ROWS; c += SPLIT) {
            part_max = max(part_max, score_a[soft_row * TILE_ROWS + c]);
        }
        var tile_max = part_max;
        // With one invocation per row (SPLIT 1, lavapipe's tiles) its partial
        // max is the row's: no exchange, one barrier less per tile.
        if (SPLIT > 1u) {
            partial[li] = part_max;
            workgroupBarrier();
            for (var j = 0u; j < SPLIT; j++) {
                tile_max = max(tile_max, partial[soft_row * SPLIT + j]);
            }
        }
        let new_max = max(run_max, tile_max);
        let rescale = exp(run_max - new_max);
        run_sum *= rescale;
        for (var c = soft_part; c < TILE_ROWS; c += SPLIT) {
            let at = soft_row * TILE_ROWS + c;
            let s_c = score_a[at];
            let prob = select(0.0, exp(s_c - new_max), s_c != NEG_BIG);
            run_sum += prob;
            if (soft_owner) {
                score_a[at] = prob;
            }
        }
        if (soft_owner && soft_part == 0u) {
            row_scale[soft_row] = rescale;
        }
        run_max = new_max;
        workgroupBarrier();
        // Accumulate phase: this invocation's head dimensions of every owned
        // row, out += P v over the tile's keys.
        for (var r = 0u; r < OWN_ROWS; r++) {
            let f = row_scale[r];
            for (var i = 0u; i < DIMS; i++) {
                acc[r * DIMS + i] *= f;
            }
        }
        let keys = min(TILE_ROWS, key_end - first_key);
        for (var c = 0u; c < keys; c++) {
            let v_at = p.v_base + (row0 + first_key + c) * kv_stride + kv_col;
            var x: array<f32, DIMS>;
            for (var i = 0u; i < DIMS; i++) {
                x[i] = v[v_at + lane_dim(li, i)];
            }
            for (var r = 0u; r < OWN_ROWS; r++) {
                let prob = score_a[r * TILE_ROWS + c];
                for (var i = 0u; i < DIMS; i++) {
                    acc[r * DIMS + i] += prob * x[i];
                }
            }
        }
    }

    // Every reader of row_scale is done; the owners add their partial sums.
    workgroupBarrier();
    partial[li] = run_sum;
    workgroupBarrier();
    if (soft_owner && soft_part == 0u) {
        var total = 0.0;
        for (var j = 0u; j < SPLIT; j++) {
            total += partial[soft_row * SPLIT + j];
        }
        // A real row always sees itself, so total >= 1 there.
        let real = own_real[soft_row] != 0.0 && total > 0.0;
        row_scale[soft_row] = select(0.0, 1.0 / total, real);
        let pos = first + soft_row;
        if (pos < p.seq) {
            out_b[p.out_b_base + (row0 + pos) * p.heads + h] = select(0.0, run_max + log(total), real);
        }
    }
    workgroupBarrier();
    for (var r = 0u; r < OWN_ROWS; r++) {
        let pos = first + r;
        let inv_sum = row_scale[r];
        let out_row = p.out_a_base + (row0 + pos) * q_stride + h * HEAD_DIM;
        for (var i = 0u; i < DIMS; i++) {
            let d = li + i * TILE_ROWS;
            if (pos < p.seq && d < HEAD_DIM) {
                out_a[out_row + d] = acc[r * DIMS + i] * inv_sum;
            }
        }
    }
}

fn query_gradients(block: u32, h: u32, b: u32, li: u32) {
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let q_stride = p.heads * HEAD_DIM;
    let kv_stride = p.kv_heads * HEAD_DIM;
    let kv_col = (h / p.group) * HEAD_DIM;

    stage_own_rows(li, row0, first, q_stride, h * HEAD_DIM, p.scale);
    for (var r = li; r < OWN_ROWS; r += WORKGROUP_SIZE) {
        let pos = first + r;
        let row = row0 + min(pos, p.seq - 1u);
        let real = pos < p.seq && is_real(row);
        own_real[r] = select(0.0, 1.0, real);
        own_lse[r] = select(0.0, lse_in[p.lse_base + row * p.heads + h], real);
        own_d[r] = select(0.0, out_b[p.out_b_base + row * p.heads + h], real);
    }

    var acc: array<f32, OWN_ROWS * DIMS>;  // sum_u dS k_u
    let key_end = min(first + OWN_ROWS, p.seq);
    for (var first_key = 0u; first_key < key_end; first_key += TILE_ROWS) {
        workgroupBarrier();
        let key = first_key + li;
        let key_row = row0 + min(key, key_end - 1u);
        let key_ok = key < key_end && is_real(key_row);
        let k_at = p.k_base + key_row * kv_stride + kv_col;
        let v_at = p.v_base + key_row * kv_stride + kv_col;
        var s: array<f32, OWN_ROWS>;
        var dp: array<f32, OWN_ROWS>;
        // Zeroed explicitly: with the declarations' zero initialisation alone
        // (WGSL's rule for each execution of a declaration) they kept the
        // previous tile's sums on lavapipe (Dawn 0.1.7, Mesa 25.0).
        for (var r = 0u; r < OWN_ROWS; r++) {
            s[r] = 0.0;
            dp[r] = 0.0;
        }
        // Two loops, not one: OWN_ROWS accumulators each stay in registers.
        for (var d = 0u; d < p.head_dim; d++) {
            let kx = k[k_at + d];
            for (var r = 0u; r < OWN_ROWS; r++) {
                s[r] += own_a[r * HEAD_DIM + d] * kx;
            }
        }
        for (var d = 0u; d < p.head_dim; d++) {
            let vx = v[v_at + d];
            for (var r = 0u; r < OWN_ROWS; r++) {
                dp[r] += own_b[r * HEAD_DIM + d] * vx;
            }
        }
        for (var r = 0u; r < OWN_ROWS; r++) {
            let ok = key_ok && key <= first + r && own_real[r] != 0.0;
            let prob = exp(s[r] - own_lse[r]);
            score_a[r * TILE_ROWS + li] = select(0.0, prob * (dp[r] - own_d[r]), ok);
        }
        workgroupBarrier();
        let keys = min(TILE_ROWS, key_end - first_key);
        for (var c = 0u; c < keys; c++) {
            let at = p.k_base + (row0 + first_key + c) * kv_stride + kv_col;
            var x: array<f32, DIMS>;
            for (var i = 0u; i < DIMS; i++) {
                x[i] = k[at + lane_dim(li, i)];
            }
            for (var r = 0u; r < OWN_ROWS; r++) {
                let ds = score_a[r * TILE_ROWS + c];
                for (var i = 0u; i < DIMS; i++) {
                    acc[r * DIMS + i] += ds * x[i];
                }
            }
        }
    }

    for (var r = 0u; r < OWN_ROWS; r++) {
        let pos = first + r;
        let real = own_real[r] != 0.0;
        let dq_row = p.out_a_base + (row0 + pos) * q_stride + h * HEAD_DIM;
        for (var i = 0u; i < DIMS; i++) {
            let d = li + i * TILE_ROWS;
            if (pos < p.seq && d < HEAD_DIM) {
                out_a[dq_row + d] = select(0.0, p.scale * acc[r * DIMS + i], real);
            }
        }
    }
}

fn key_gradients(block: u32, g: u32, b: u32, li: u32) {
    let row0 = b * p.seq;
    let first = block * OWN_ROWS;
    let q_stride = p.heads * HEAD_DIM;
    let kv_stride = p.kv_heads * HEAD_DIM;

    stage_own_rows(li, row0, first, kv_stride, g * HEAD_DIM, 1.0);
    for (var r = li; r < OWN_ROWS; r += WORKGROUP_SIZE) {
        let pos = first + r;
        // Padding is per token, so any head's D tells.
        let real = pos < p.seq && dsum_at(row0 + min(pos, p.seq - 1u), g * p.group) != PADDING_D;
        own_real[r] = select(0.0, 1.0, real);
    }

    var acc_dk: array<f32, OWN_ROWS * DIMS>;  // sum dS q (unscaled)
    var acc_dv: array<f32, OWN_ROWS * DIMS>;  // sum P dout
    for (var member = 0u; member < p.group; member++) {
        let h = g * p.group + member;
        let q_col = h * HEAD_DIM;
        // Queries before the block's first key see none of its keys.
        for (var first_query = first; first_query < p.seq; first_query += TILE_ROWS) {
            workgroupBarrier();
            // Score phase: this invocation's query column against every
            // owned key row.
            let query = first_query + li;
            let query_row = row0 + min(query, p.seq - 1u);
            let dsum = dsum_at(query_row, h);
            let query_ok = query < p.seq && dsum != PADDING_D;
            let query_lse = lse_in[p.lse_base + query_row * p.heads + h];
            let query_d = select(0.0, dsum, query_ok);
            let q_at = p.q_base + query_row * q_stride + q_col;
            let dout_at = p.dout_base + query_row * q_stride + q_col;
            var s: array<f32, OWN_ROWS>;
            var dp: array<f32, OWN_ROWS>;
            for (var r = 0u; r < OWN_ROWS; r++) {
                s[r] = 0.0;
                dp[r] = 0.0;
            }
            for (var d = 0u; d < p.head_dim; d++) {
                let qx = q[q_at + d];
                for (var r = 0u; r < OWN_ROWS; r++) {
                    s[r] += own_a[r * HEAD_DIM + d] * qx;
                }
            }
            for (var d = 0u; d < p.head_dim; d++) {
                let dx = dout[dout_at + d];
                for (var r = 0u; r < OWN_ROWS; r++) {
                    dp[r] += own_b[r * HEAD_DIM + d] * dx;
                }
            }
            for (var r = 0u; r < OWN_ROWS; r++) {
                let ok = query_ok && query >= first + r && own_real[r] != 0.0;
                let prob = exp(p.scale * s[r] - query_lse);
                score_a[r * TILE_ROWS + li] = select(0.0, prob, ok);
                score_b[r * TILE_ROWS + li] = select(0.0, prob * (dp[r] - query_d), ok);
            }
            workgroupBarrier();
            // Accumulate phase: this invocation's head dimensions of every
            // owned row's dk and dv over the tile's queries.
            let queries = min(TILE_ROWS, p.seq - first_query);
            for (var c = 0u; c < queries; c++) {
                let row = row0 + first_query + c;
                let at_q = p.q_base + row * q_stride + q_col;
                let at_dout = p.dout_base + row * q_stride + q_col;
                var qx: array<f32, DIMS>;
                var dx: array<f32, DIMS>;
                for (var i = 0u; i < DIMS; i++) {
                    qx[i] = q[at_q + lane_dim(li, i)];
                    dx[i] = dout[at_dout + lane_dim(li, i)];
                }
                for (var r = 0u; r < OWN_ROWS; r++) {
                    let prob = score_a[r * TILE_ROWS + c];
                    let ds = score_b[r * TILE_ROWS + c];
                    for (var i = 0u; i < DIMS; i++) {
                        acc_dv[r * DIMS + i] += prob * dx[i];
                        acc_dk[r * DIMS + i] += ds * qx[i];
                    }
                }
            }
        }
    }

    for (var r = 0u; r < OWN_ROWS; r++) {
        let pos = first + r;
        let real = own_real[r] != 0.0;
        let at = (row0 + pos) * kv_stride + g * HEAD_DIM;
        for (var i = 0u; i < DIMS; i++) {
            let d = li + i * TILE_ROWS;
            if (pos < p.seq && d < HEAD_DIM) {
                out_a[p.out_a_base + at + d] = select(0.0, p.scale * acc_dk[r * DIMS + i], real);
                out_b[p.out_b_base + at + d] = select(0.0, acc_dv[r * DIMS + i], real);
            }
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
