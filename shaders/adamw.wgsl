// adamw.wgsl: one AdamW step (torch.optim.AdamW) on one parameter tensor, with
// the global gradient-norm clip of torch.nn.utils.clip_grad_norm_ folded in.
//
// For every element i < n, with g = clip * grad[i]:
//   param = param * decay                  decay = 1 - lr*weight_decay (decoupled,
//                                          applied first, as torch does)
//   m = beta1*m + (1-beta1)*g
//   v = beta2*v + (1-beta2)*g*g
//   param -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)
// where step_size = lr / (1 - beta1^t) and bias_correction2_sqrt =
// sqrt(1 - beta2^t) come from the host (float64, from the step number t), which
// is torch's evaluation order. grad is read, never written: torch scales the
// gradients in place, but nothing reads them after the step before they are
// zeroed, so the write would be wasted bandwidth.
//
// The clip coefficient is derived here from the sum of squares of all gradients
// that earlier dispatches of the same submission left in stats, so the norm never
// visits the host: norm = sqrt(sum), clip = min(1, max_norm / (norm + 1e-6)), or
// 1 when max_norm <= 0 (clipping off). Every invocation computes it (one load and
// a few flops, cheaper than another dispatch); the dispatch with publish != 0
// also stores norm and clip for logging.
//
// Bindings (group 0):
//   0  uniform Params (below).
//   1  storage, read, array<f32> `grad`: the gradient.
//   2  storage, read_write, array<f32> `param`: the parameter.
//   3  storage, read_write, array<f32> `state`: the moments, m[i] at
//      state_base + i and v[i] at state_base + n + i.
//   4  storage, read_write, array<f32> `stats`: stats_base + 0 holds the sum of
//      squares of all gradients (input); stats_base + 1 and + 2 receive the
//      norm and the clip coefficient when publish != 0.
// The four bindings must be four different buffers: WebGPU forbids binding one
// buffer both read-only and writable in a dispatch, and aligned ranges of two
// tensors in one buffer may overlap.
//
// Params (64 bytes, little-endian; offsets in bytes):
//   0  n: u32                        elements of the parameter
//   4  param_base: u32               element index of param[0] in binding 2
//   8  grad_base: u32                element index of grad[0] in binding 1
//   12 state_base: u32               element index of m[0] in binding 3
//   16 beta1: f32
//   20 beta2: f32
//   24 one_minus_beta1: f32          1 - beta1, rounded once from float64
//   28 one_minus_beta2: f32
//   32 eps: f32
//   36 decay: f32                    1 - lr*weight_decay
//   40 step_size: f32                lr / (1 - beta1^t)
//   44 bias_correction2_sqrt: f32    sqrt(1 - beta2^t)
//   48 max_norm: f32                 clip threshold; <= 0 disables clipping
//   52 stats_base: u32               element index of the sum of squares in binding 4
//   56 publish: u32                  non-zero: store norm and clip
//   60 4 bytes of padding
// The bases let tensors sit at any 4-byte offset although storage bindings start
// at multiples of minStorageBufferOffsetAlignment (see gpu.Tensor.View).
//
// Workgroup: WORKGROUP_SIZE x 1 x 1 invocations, one element each, element
// flat_element over the 2-D grid (prelude.wgsl).
// Invocations past n only take part in publishing (element 0's invocation).
//
// Injected consts:
//   WORKGROUP_SIZE: u32  invocations per workgroup.

struct Params {
    n: u32, param_base: u32, grad_base: u32, state_base: u32,
    beta1: f32, beta2: f32, one_minus_beta1: f32, one_minus_beta2: f32,
    eps: f32, decay: f32, step_size: f32, bias_correction2_sqrt: f32,
    max_norm: f32, stats_base: u32, publish: u32, pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;

// clip_grad_norm_'s epsilon in the denominator, which keeps a zero norm finite.
const NORM_EPS = 1e-6;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(workgroup: WorkgroupGrid, @builtin(local_invocation_index) lane: u32) {
    let i = flat_element(workgroup, lane);

    let norm = sqrt(stats[p.stats_base]);
    var clip = 1.0;
    if (p.max_norm > 0.0) {
        clip = min(1.0, p.max_norm / (norm + NORM_EPS));
    }
    if (p.publish != 0u && i == 0u) {
        stats[p.stats_base + 1u] = norm;
        stats[p.stats_base + 2u] = clip;
    }
    if (i >= p.n) {
        return;
    }

    let g = clip * grad[p.grad_base + i];
    let mi = p.state_base + i;
    let vi = p.state_base + p.n + i;
    let m = p.beta1 * state[mi] + p.one_minus_beta1 * g;
    let v = p.beta2 * state[vi] + p.one_minus_beta2 * g * g;
    state[mi] = m;
    state[vi] = v;

    let decayed = param[p.param_base + i] * p.decay;
    let denom = sqrt(v) / p.bias_correction2_sqrt + p.eps;
    param[p.param_base + i] = decayed - p.step_size * m / denom;
}
