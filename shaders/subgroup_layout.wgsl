// subgroup_layout.wgsl: the probe of how a device forms subgroups, run by
// package gpu when it opens a device with the subgroups feature. The prelude's
// subgroup reductions store each subgroup's partial at slot lane / c, which
// is right only where every subgroup is a block of c consecutive
// local_invocation_index values starting at a multiple of c, and its
// invocations' ranks follow their lanes. WGSL does not promise that, so the
// device's layout is checked first.
//
// Bindings: 1 record: array<u32>, 3 words per invocation of one workgroup:
// the smallest lane of its subgroup, the subgroup's active invocation count
// (subgroupAdd(1u)) and its rank among them (subgroupExclusiveAdd(1u)).
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one workgroup.

@group(0) @binding(1) var<storage, read_write> record: array<u32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_index) lane: u32) {
    record[3u * lane] = subgroupMin(lane);
    record[3u * lane + 1u] = subgroupAdd(1u);
    record[3u * lane + 2u] = subgroupExclusiveAdd(1u);
}
