// prelude.wgsl: the WGSL every kernel shares. WGSL has no #include, so package
// gpu compiles each kernel as its injected consts, then this file, then the
// kernel's own file; compile errors name the part and its own line
// (`prelude.wgsl:12:5`, `rmsnorm.wgsl:80:9`). Kernels call what is here instead
// of repeating it.
//
// Contract: every kernel declares WORKGROUP_SIZE, the number of invocations of
// its workgroup (injected, or a const of its own); the reductions size their
// scratch with it. A module-scope variable that a kernel does not use costs it
// nothing, so unused parts are free. Names here are kept out of the kernels'
// own.

// ---- bf16 and f16 widening ----
// Frozen weights and tables may be 16-bit floats packed two per u32 word,
// element 2i in the low half (the little-endian layout of the file). A kernel
// binds them as array<u32> and widens element e from its word, array[e >> 1u].
// bf16 is the top half of an f32, so widening it is exact.

// bf16_at widens bf16 element e, given the word that holds it.
fn bf16_at(word: u32, e: u32) -> f32 {
    if ((e & 1u) == 0u) {
        return bitcast<f32>(word << 16u);
    }
    return bitcast<f32>(word & 0xffff0000u);
}

// bf16_pair widens both bf16 elements of a word: (element 2i, element 2i + 1).
fn bf16_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// load_f32_or_bf16 reads element e of an array bound as array<u32> that holds
// f32 bits, or with is_bf16 bf16 halves (then e counts halves). (A storage
// pointer argument is WGSL's unrestricted_pointer_parameters, which Dawn has.)
fn load_f32_or_bf16(words: ptr<storage, array<u32>, read>, e: u32, is_bf16: bool) -> f32 {
    if (is_bf16) {
        return bf16_at((*words)[e >> 1u], e);
    }
    return bitcast<f32>((*words)[e]);
}

// f16_at widens IEEE half-precision element e, given the word that holds it.
// (WGSL lets unpack2x16float flush f16 subnormals to zero.)
fn f16_at(word: u32, e: u32) -> f32 {
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, (e & 1u) == 1u);
}

// f16_pair widens both f16 elements of a word: (element 2i, element 2i + 1).
fn f16_pair(word: u32) -> vec2<f32> {
    return unpack2x16float(word);
}

// ---- Quantized weight loads ----
// An affine-quantized weight (gpu.Affine, MLX's format; SPEC section 11) is
// bound as array<u32> rows: a row's codes, element c's `bits`-bit code at bits
// (c*bits) mod 32 of word c*bits/32 (a little-endian bit stream), then each
// group of `group` inputs' scale and bias: one word, scale in the low half,
// for bf16 (scales == 1u) or f16 (scales == 2u); two words, scale then bias,
// for f32 (scales == 0u). The weight is s*q + b. Kernels pass their injected
// constants for bits, group and scales, so the branches fold away.

// f16_exact widens IEEE half-precision bits exactly, subnormals included
// (unpack2x16float may flush them, and a tiny scale must not become zero).
fn f16_exact(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(m) * 5.9604644775390625e-8; // m * 2^-24
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// affine_scale_bias widens a group's (scale, bias) from its words; w1 is
// only used for f32.
fn affine_scale_bias(w0: u32, w1: u32, scales: u32) -> vec2<f32> {
    if (scales == 1u) {
        return bf16_pair(w0);
    }
    if (scales == 2u) {
        return vec2<f32>(f16_exact(w0 & 0xffffu), f16_exact(w0 >> 16u));
    }
    return vec2<f32>(bitcast<f32>(w0), bitcast<f32>(w1));
}

// load_affine reads element c of the quantized row that starts at word row,
// whose scales and biases start scale_off words later.
fn load_affine(words: ptr<storage, array<u32>, read>, row: u32, scale_off: u32, c: u32,
               bits: u32, group: u32, scales: u32) -> f32 {
    let bit = c * bits;
    let q = f32(((*words)[row + (bit >> 5u)] >> (bit & 31u)) & ((1u << bits) - 1u));
    let g = row + scale_off + (c / group) * select(1u, 2u, scales == 0u);
    var w1 = 0u;
    if (scales == 0u) {
        w1 = (*words)[g + 1u];
    }
    let sb = affine_scale_bias((*words)[g], w1, scales);
    return fma(sb.x, q, sb.y);
}

// ---- Grid index ----
// A kernel that gives each workgroup (or each invocation) one index of a flat
// range may need more than maxComputeWorkgroupsPerDimension (65535) workgroups,
// so the host lays them out as a 2-D grid (gpu.SplitGrid): workgroup (x, y) is
// number y * num_workgroups.x + x, and numbers past the end exit. Such a kernel
// takes a WorkgroupGrid as its entry point's argument:
//   @compute @workgroup_size(WORKGROUP_SIZE)
//   fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
//       let i = flat_element(workgroup, lane);
// local_invocation_index stays a separate argument: the uniformity analysis
// counts a struct argument as varying across the workgroup if any member is,
// and the workgroup's number must count as uniform for the reductions' barriers.

struct WorkgroupGrid {
    @builtin(workgroup_id) id: vec3<u32>,
    @builtin(num_workgroups) size: vec3<u32>,
}

// flat_workgroup is the workgroup's number in the flat range.
fn flat_workgroup(workgroup: WorkgroupGrid) -> u32 {
    return workgroup.id.y * workgroup.size.x + workgroup.id.x;
}

// flat_element is the number of invocation lane of the workgroup in the flat
// range when each workgroup of WORKGROUP_SIZE invocations takes WORKGROUP_SIZE
// elements.
fn flat_element(workgroup: WorkgroupGrid, lane: u32) -> u32 {
    return flat_workgroup(workgroup) * WORKGROUP_SIZE + lane;
}

// ---- Activation math ----

// sigmoid is 1 / (1 + e^-z) evaluated through exp(-|z|), which never
// overflows: large |z| gives 0 or 1, never inf/inf.
fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    let s = 1.0 / (1.0 + e);
    // For z < 0, sigmoid(z) = e^z / (1 + e^z) = e * s.
    return select(e * s, s, z >= 0.0);
}

// ---- Workgroup reductions ----
// Every invocation of the workgroup calls them (they hold barriers, so in
// uniform control flow) with lane = local_invocation_index, and all get the
// same result. They end with a barrier, so they may be called back to back.
//
// Without subgroups: trees over the WORKGROUP_SIZE invocations (a power of
// two): at step h = WORKGROUP_SIZE/2, ..., 1, invocation i < h combines its
// value with that of i + h, so the order of the operations depends on the
// workgroup size only.
//
// With subgroups (package gpu compiles the //#if subgroups sections where the
// device enables the feature): a subgroup operation combines each subgroup's
// values, its first invocation stores the partial, and after one barrier
// every subgroup combines the partials, its invocation of rank r (of c)
// taking partials r, r + c, ... before a last subgroup operation: two
// barriers instead of log2(WORKGROUP_SIZE) + 2. The subgroup size c is the
// adapter's (8 on lavapipe, 32 or 64 on GPUs; it may vary between kernels and
// exceed the workgroup), so rank and c come from subgroupExclusiveAdd(1u)
// and subgroupAdd(1u), not from a constant (the subgroup builtins are
// entry-point arguments that callers do not pass). WGSL does not promise
// which invocations form a subgroup: the partial's slot, lane / c, assumes
// blocks of c consecutive lanes starting at multiples of c, which package gpu
// checks on the device before it enables this path (Device.HasSubgroups).

var<workgroup> reduction_scratch: array<f32, WORKGROUP_SIZE>;

// workgroup_sum is the sum of value over the workgroup's invocations.
fn workgroup_sum(lane: u32, value: f32) -> f32 {
//#if subgroups
    let count = subgroupAdd(1u);
    let rank = subgroupExclusiveAdd(1u);
    let subgroup_total = subgroupAdd(value);
    if (rank == 0u) {
        reduction_scratch[lane / count] = subgroup_total;
    }
    workgroupBarrier();
    var partial = 0.0;
    for (var slot = rank; slot < (WORKGROUP_SIZE + count - 1u) / count; slot += count) {
        partial += reduction_scratch[slot];
    }
    let result = subgroupAdd(partial);
    workgroupBarrier();
    return result;
//#else
    reduction_scratch[lane] = value;
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lane < half) {
            reduction_scratch[lane] += reduction_scratch[lane + half];
        }
    }
    return reduction_result();
//#endif
}

// workgroup_max is the maximum of value over the workgroup's invocations (as
// WGSL's max, which may return either operand when one is NaN).
fn workgroup_max(lane: u32, value: f32) -> f32 {
//#if subgroups
    let count = subgroupAdd(1u);
    let rank = subgroupExclusiveAdd(1u);
    let subgroup_max = subgroupMax(value);
    if (rank == 0u) {
        reduction_scratch[lane / count] = subgroup_max;
    }
    workgroupBarrier();
    // Partial 0 always exists, and max(x, x) is x.
    var partial = reduction_scratch[0];
    for (var slot = rank; slot < (WORKGROUP_SIZE + count - 1u) / count; slot += count) {
        partial = max(partial, reduction_scratch[slot]);
    }
    let result = subgroupMax(partial);
    workgroupBarrier();
    return result;
//#else
    reduction_scratch[lane] = value;
    for (var half = WORKGROUP_SIZE / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if (lane < half) {
            reduction_scratch[lane] = max(reduction_scratch[lane], reduction_scratch[lane + half]);
        }
    }
    return reduction_result();
//#endif
}

// reduction_result hands every invocation the tree's root, then frees the
// scratch for the next reduction.
fn reduction_result() -> f32 {
    let result = workgroupUniformLoad(&reduction_scratch[0]);
    workgroupBarrier();
    return result;
}
