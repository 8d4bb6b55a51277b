package gpu

import (
	"context"
	"encoding/binary"
	"fmt"
)

// subgroupLayoutShader is the probe of how the device forms subgroups.
const subgroupLayoutShader = "subgroup_layout.wgsl"

// subgroupProbeSizes are the workgroup sizes whose subgroup layout is checked:
// those of the kernels that reduce (64 and 256), and the smallest, where a
// subgroup may be larger than the workgroup.
var subgroupProbeSizes = []int{4, 64, 256}

// checkSubgroupLayout checks that the device forms the subgroups of a
// workgroup as the prelude's subgroup reductions assume (prelude.wgsl): each
// a block of c consecutive local_invocation_index values starting at a
// multiple of c, one c for the whole workgroup, ranks in lane order. It
// returns what it found otherwise as layout, and err if the probe could not
// run. The subgroup size may differ between kernels (the reductions read it
// in each); the layout is the driver's, so probing one kernel per workgroup
// size stands for all.
func (d *Device) checkSubgroupLayout(ctx context.Context) (layout, err error) {
	for _, size := range subgroupProbeSizes {
		k, err := d.Kernel(subgroupLayoutShader, U32("WORKGROUP_SIZE", size))
		if err != nil {
			return nil, err
		}
		buf, err := d.NewBuffer(uint64(12*size), "subgroup layout")
		if err != nil {
			return nil, err
		}
		defer buf.Release()
		rec := d.NewRecorder()
		err = rec.Dispatch(KindReduction, k, nil, []Binding{Bind(buf)}, 1, 1, 1)
		if err == nil {
			err = rec.Submit()
		}
		rec.Release()
		if err != nil {
			return nil, err
		}
		raw, err := buf.Read(ctx, 0, uint64(12*size))
		if err != nil {
			return nil, err
		}
		if err := checkLayout(size, raw); err != nil {
			return fmt.Errorf("workgroup of %d: %w", size, err), nil
		}
	}
	return nil, nil
}

// checkLayout checks the probe's record of one workgroup of size invocations:
// per lane, the first lane of its subgroup, the subgroup's count and the
// lane's rank.
func checkLayout(size int, raw []byte) error {
	word := func(i int) int { return int(binary.LittleEndian.Uint32(raw[4*i:])) }
	count := word(1)
	for lane := range size {
		first, c, rank := word(3*lane), word(3*lane+1), word(3*lane+2)
		switch {
		case c != count:
			return fmt.Errorf("lane %d is in a subgroup of %d, lane 0 in one of %d", lane, c, count)
		case c == 0 || first%c != 0 || first+rank != lane || rank >= c:
			return fmt.Errorf("lane %d has rank %d in a subgroup of %d whose first lane is %d: not a block of consecutive lanes at a multiple of its size", lane, rank, c, first)
		case word(3*first) != first:
			return fmt.Errorf("lane %d counts lane %d first in its subgroup, which does not", lane, first)
		}
	}
	return nil
}
