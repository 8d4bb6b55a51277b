// gemm.wgsl: C = alpha * op(A) op(B) + beta * C, f32 accumulation, with optional
// index lists that gather rows of A, rows or columns of B, and scatter rows and
// columns of C. This one kernel is both the dense GEMM and SparseLoRA's primitive
// (token subsets x channel subsets), so both run at the same speed per useful FLOP.
//
// Logical shapes: op(A) is M x K, op(B) is K x N, C is M x N (row-major, leading
// dimension ldc). Storage (element offsets offA/offB/offC, leading dimensions):
//   A_TRANS = false: A[m, k] at a[offA + m*lda + k]   (A stored M x K)
//   A_TRANS = true:  A[m, k] at a[offA + k*lda + m]   (A stored K x M)
//   B_TRANS = false: B[k, n] at b[offB + k*ldb + n]   (B stored K x N)
//   B_TRANS = true:  B[k, n] at b[offB + n*ldb + k]   (B stored N x K, e.g. a
//                    HF weight [out, in] for y = x W^T)
//   B_BF16 = true: b holds bfloat16 packed two per u32, element e in the low half
//   of word e/2 when e is even, the high half when odd (e = the flat index above).
//
// Index lists live in GPU buffers as [count, i0, i1, ...] starting at the given
// element offset; counts are read on the GPU, never from the host, and the
// dispatch is sized for the largest possible count (surplus workgroups exit).
//   GATHER_AM:  row m of op(A) is row idx_m[m] of the stored A; M = its count.
//   GATHER_BN:  column n of op(B) is column idx_n[n] of B;       N = its count.
//   GATHER_K:   step k reads B's k-index idx_k[k];               K = its count.
//   GATHER_AK:  (with GATHER_K) A's k-index is idx_k[k] too; otherwise A is
//               compact along K.
//   SCATTER_CM: row m of the result goes to C row idx_c[m]; without GATHER_AM,
//               M = this list's count.
//   SCATTER_CN: (with GATHER_BN) column n goes to C column idx_n[n].
// Without a list, M, N, K come from the params.
//
// Bindings (group 0): 0 params (uniform Params below); 1 a: array<f32> (read);
// 2 b: array<u32> (read; f32 bits or packed bf16); 3 c: array<f32> (read_write);
// 4 idx_m, 5 idx_n, 6 idx_k, 7 idx_c: array<u32> (read; bind any buffer when unused).
//
// Tiling: a workgroup computes a BM x BN tile of C with (BN/TN) x (BM/TM) threads,
// each owning TM x TN outputs spread at strides BM/TM and BN/TN (so shared-memory
// reads and C writes are contiguous across threads), stepping K by BK through
// workgroup memory (op(A) only where threads share its rows: see A_DIRECT).
// Grid: (ceil(N/BN), ceil(M/BM), 1).
//   B_AFFINE = true: b is an affine-quantized weight (gpu.Affine; read with
//   prelude.wgsl's load_affine): stored element (r, c) (r = n, c = k with
//   B_TRANS, else r = k, c = n) is in the row that starts at word
//   offB + r*ldb (ldb: the row's length in words), its scales and biases
//   affineScaleOff words further. Tiles are filled with dequantized values;
//   the weight is never dequantized in memory.
// Constants: BM, BN, BK, TM, TN (u32), the bool flags above, and AFFINE_BITS,
// AFFINE_GROUP, AFFINE_SCALES (u32) for B_AFFINE.

struct Params {
  m: u32, n: u32, k: u32, lda: u32,
  ldb: u32, ldc: u32, offA: u32, offB: u32,
  offC: u32, alpha: f32, beta: f32, offIdxM: u32,
  offIdxN: u32, offIdxK: u32, offIdxC: u32, affineScaleOff: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> idx_m: array<u32>;
@group(0) @binding(5) var<storage, read> idx_n: array<u32>;
@group(0) @binding(6) var<storage, read> idx_k: array<u32>;
@group(0) @binding(7) var<storage, read> idx_c: array<u32>;

const WX: u32 = BN / TN;
const WY: u32 = BM / TM;
const WORKGROUP_SIZE: u32 = WX * WY;
// A_DIRECT: when a thread owns whole rows of the C tile (BN == TN), each
// element of op(A) it reads is read by no other thread: it loads them from
// the buffer into registers, without staging them in tileA and a barrier
// (the predictor's rank-8 tile on CPU adapters).
const A_DIRECT: bool = WX == 1u;

var<workgroup> tileA: array<f32, BK * BM>; // [k][m]
var<workgroup> tileB: array<f32, BK * BN>; // [k][n]
var<workgroup> dims: vec3u;

// load_b is stored element (r, c) of B (row r of its stored layout).
fn load_b(r: u32, c: u32) -> f32 {
  if (B_AFFINE) {
    return load_affine(&b, p.offB + r * p.ldb, p.affineScaleOff, c, AFFINE_BITS, AFFINE_GROUP, AFFINE_SCALES);
  }
  return load_f32_or_bf16(&b, p.offB + r * p.ldb + c, B_BF16);
}

@compute @workgroup_size(WX, WY, 1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  if (tid == 0u) {
    var m = p.m;
    var n = p.n;
    var k = p.k;
    if (SCATTER_CM) { m = idx_c[p.offIdxC]; }
    if (GATHER_AM) { m = idx_m[p.offIdxM]; }
    if (GATHER_BN) { n = idx_n[p.offIdxN]; }
    if (GATHER_K) { k = idx_k[p.offIdxK]; }
    dims = vec3u(m, n, k);
  }
  let d = workgroupUniformLoad(&dims);
  let M = d.x;
  let N = d.y;
  let K = d.z;
  let row0 = wg.y * BM;
  let col0 = wg.x * BN;
  if (row0 >= M || col0 >= N) {
    return;
  }
  let tx = tid % WX;
  let ty = tid / WX;

  var acc: array<f32, TM * TN>;
  for (var i = 0u; i < TM * TN; i++) {
    acc[i] = 0.0;
  }
  // A_DIRECT: where this thread's rows of op(A) start in a, the step between
  // consecutive k there, and which rows exist.
  var aStart: array<u32, TM>;
  var aHas: array<bool, TM>;
  var aStepK = 1u;
  if (A_TRANS) { aStepK = p.lda; }
  if (A_DIRECT) {
    for (var i = 0u; i < TM; i++) {
      let gm = row0 + ty + i * WY;
      aHas[i] = gm < M;
      var am = gm;
      if (GATHER_AM && gm < M) { am = idx_m[p.offIdxM + 1u + gm]; }
      if (A_TRANS) { aStart[i] = p.offA + am; } else { aStart[i] = p.offA + am * p.lda; }
    }
  }

  for (var k0 = 0u; k0 < K; k0 += BK) {
    // Stage op(A)[row0.., k0..] into tileA, reading along A's contiguous axis.
    for (var e = tid; e < BM * BK && !A_DIRECT; e += WORKGROUP_SIZE) {
      var mm: u32;
      var kk: u32;
      if (A_TRANS) { kk = e / BM; mm = e % BM; } else { mm = e / BK; kk = e % BK; }
      let gm = row0 + mm;
      let gk = k0 + kk;
      var v = 0.0;
      if (gm < M && gk < K) {
        var am = gm;
        if (GATHER_AM) { am = idx_m[p.offIdxM + 1u + gm]; }
        var ak = gk;
        if (GATHER_K && GATHER_AK) { ak = idx_k[p.offIdxK + 1u + gk]; }
        if (A_TRANS) { v = a[p.offA + ak * p.lda + am]; } else { v = a[p.offA + am * p.lda + ak]; }
      }
      tileA[kk * BM + mm] = v;
    }
    // Stage op(B)[k0.., col0..] into tileB.
    for (var e = tid; e < BK * BN; e += WORKGROUP_SIZE) {
      var kk: u32;
      var nn: u32;
      if (B_TRANS) { nn = e / BK; kk = e % BK; } else { kk = e / BN; nn = e % BN; }
      let gk = k0 + kk;
      let gn = col0 + nn;
      var v = 0.0;
      if (gk < K && gn < N) {
        var bk = gk;
        if (GATHER_K) { bk = idx_k[p.offIdxK + 1u + gk]; }
        var bn = gn;
        if (GATHER_BN) { bn = idx_n[p.offIdxN + 1u + gn]; }
        if (B_TRANS) { v = load_b(bn, bk); } else { v = load_b(bk, bn); }
      }
      tileB[kk * BN + nn] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var av: array<f32, TM>;
      var bv: array<f32, TN>;
      if (A_DIRECT) {
        let gk = k0 + kk;
        var ak = gk;
        if (GATHER_K && GATHER_AK && gk < K) { ak = idx_k[p.offIdxK + 1u + gk]; }
        for (var i = 0u; i < TM; i++) {
          var v = 0.0;
          if (aHas[i] && gk < K) { v = a[aStart[i] + ak * aStepK]; }
          av[i] = v;
        }
      } else {
        for (var i = 0u; i < TM; i++) {
          av[i] = tileA[kk * BM + ty + i * WY];
        }
      }
      for (var j = 0u; j < TN; j++) {
        bv[j] = tileB[kk * BN + tx + j * WX];
      }
      for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
          acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
        }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM; i++) {
    let gm = row0 + ty + i * WY;
    if (gm >= M) {
      continue;
    }
    var cm = gm;
    if (SCATTER_CM) { cm = idx_c[p.offIdxC + 1u + gm]; }
    for (var j = 0u; j < TN; j++) {
      let gn = col0 + tx + j * WX;
      if (gn >= N) {
        continue;
      }
      var cn = gn;
      if (GATHER_BN && SCATTER_CN) { cn = idx_n[p.offIdxN + 1u + gn]; }
      let at = p.offC + cm * p.ldc + cn;
      var v = p.alpha * acc[i * TN + j];
      if (p.beta != 0.0) {
        v += p.beta * c[at];
      }
      c[at] = v;
    }
  }
}
