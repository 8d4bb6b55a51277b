// gemm_grid.wgsl: computes the workgroup grid of a gathered GEMM on the GPU from
// the counts of its index lists (see gemm.wgsl), so that a gathered GEMM launches
// only the tiles it needs and the counts never visit the host. One thread.
//
// Bindings (group 0): 0 params (uniform Params); 1 rows: array<u32> (read; the
// list whose count is M, when ROWS_FROM_LIST); 2 cols: array<u32> (read; the list
// whose count is N, when COLS_FROM_LIST); 3 grid: array<u32> (read_write;
// receives x, y, z at element offGrid, for dispatchWorkgroupsIndirect).
// Constants: ROWS_FROM_LIST, COLS_FROM_LIST (bool).

struct Params {
  m: u32, n: u32, bm: u32, bn: u32,
  offRows: u32, offCols: u32, offGrid: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rows: array<u32>;
@group(0) @binding(2) var<storage, read> cols: array<u32>;
@group(0) @binding(3) var<storage, read_write> grid: array<u32>;

const WORKGROUP_SIZE = 1u;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main() {
  var m = p.m;
  var n = p.n;
  // Never launch more than the host-sized bound, even if a list is corrupt.
  if (ROWS_FROM_LIST) { m = min(rows[p.offRows], p.m); }
  if (COLS_FROM_LIST) { n = min(cols[p.offCols], p.n); }
  let gx = (n + p.bn - 1u) / p.bn;
  let gy = (m + p.bm - 1u) / p.bm;
  // An empty grid is legal for indirect dispatch: nothing runs.
  grid[p.offGrid] = select(gx, 0u, gy == 0u);
  grid[p.offGrid + 1u] = select(gy, 0u, gx == 0u);
  grid[p.offGrid + 2u] = 1u;
}
