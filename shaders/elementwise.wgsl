// elementwise.wgsl: elementwise updates and per-row reductions of f32 arrays.
//
// Operations, chosen by the injected const OP:
//   OP_AXPBY (0)            dst[i] = alpha*src[i] + beta*dst[i] for i < n. A zero
//                           alpha (beta) skips reading src (dst), as BLAS does, so a
//                           NaN in an operand whose weight is zero does not reach
//                           the result: with beta = 0, dst may be uninitialised.
//   OP_SCALE (1)            dst[i] = alpha*dst[i] for i < n; src is not read.
//   OP_ROW_SUM (2)          dst[r] = sum_c src[r*n + c] for r < rows.
//   OP_ROW_SUM_SQUARES (3)  dst[r] = sum_c src[r*n + c]^2 for r < rows.
// Indices above are relative to each array's base element (dst_base, src_base).
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read_write, array<f32> `dst`: the buffer of the output (y or out).
//   2  storage, read, array<f32> `src`: the buffer of the input x. When SHARED, or
//      for OP_SCALE, the kernel never reads it and the caller binds the device's
//      read-only placeholder buffer.
// Every op binds both storage buffers because the bind group layout comes from
// what `main` references, whatever the consts; see SHARED for why x cannot
// simply be bound twice.
//
// Params (32 bytes, little-endian):
//   offset 0   n: u32         elements (AXPBY, SCALE) or columns (row reductions)
//   offset 4   rows: u32      rows (row reductions; unused otherwise)
//   offset 8   dst_base: u32  element index of the output's first element in binding 1
//   offset 12  src_base: u32  element index of the input's first element in binding 2,
//                             or in binding 1 when SHARED
//   offset 16  alpha: f32
//   offset 20  beta: f32
//   offset 24  8 bytes of padding
// The bases let tensors sit at any 4-byte offset although storage bindings must
// start at multiples of minStorageBufferOffsetAlignment: the caller binds from
// the aligned offset at or below the tensor and passes the remainder here.
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations; workgroup g = flat_workgroup
// over the 2-D grid (prelude.wgsl). Elementwise ops give invocation `lane` of
// workgroup g element g*WORKGROUP_SIZE + lane. Row reductions give workgroup g
// row g: its invocations stride over the columns, then add their partial sums
// with workgroup_sum. Workgroups past the end do nothing, so the grid may be
// rounded up to a rectangle.
//
// Injected consts:
//   OP: u32              one of the OP_* values above.
//   SHARED: bool         the input lies in the output's buffer and is read through
//                        binding 1: WebGPU forbids one buffer being bound both
//                        writable and read-only in a dispatch, and two writable
//                        bindings of it must not overlap, which aligned ranges of
//                        nearby tensors would.
//   WORKGROUP_SIZE: u32  invocations per workgroup; a power of two (the tree
//                        reduction halves it).

const OP_AXPBY = 0u;
const OP_SCALE = 1u;
const OP_ROW_SUM = 2u;
const OP_ROW_SUM_SQUARES = 3u;

struct Params {
    n: u32, rows: u32, dst_base: u32, src_base: u32,
    alpha: f32, beta: f32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

// load_input reads element i (relative to src_base) of the input.
fn load_input(i: u32) -> f32 {
    if (SHARED) {
        return dst[p.src_base + i];
    }
    return src[p.src_base + i];
}

fn update_element(group: u32, lane: u32) {
    let i = group * WORKGROUP_SIZE + lane;
    if (i >= p.n) {
        return;
    }
    let out = p.dst_base + i;
    if (OP == OP_SCALE) {
        dst[out] = p.alpha * dst[out];
        return;
    }
    var v = 0.0;
    if (p.alpha != 0.0) {
        v = p.alpha * load_input(i);
    }
    if (p.beta != 0.0) {
        v += p.beta * dst[out];
    }
    dst[out] = v;
}

fn reduce_row(row: u32, lane: u32) {
    if (row >= p.rows) {
        return;
    }
    let start = row * p.n;
    var acc = 0.0;
    for (var c = lane; c < p.n; c += WORKGROUP_SIZE) {
        let v = load_input(start + c);
        if (OP == OP_ROW_SUM_SQUARES) {
            acc += v * v;
        } else {
            acc += v;
        }
    }
    let total = workgroup_sum(lane, acc);
    if (lane == 0u) {
        dst[p.dst_base + row] = total;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let group = flat_workgroup(workgroup);
    if (OP == OP_AXPBY || OP == OP_SCALE) {
        update_element(group, lane);
    } else {
        reduce_row(group, lane);
    }
}
