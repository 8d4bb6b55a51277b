// Package optim owns what updates trainable tensors, whoever owns them (LoRA
// adapters or every weight in full training): Param (a value and its gradient,
// both owned by the caller), the AdamW optimizer with global gradient-norm
// clipping computed on the GPU (so a step needs no host read-back), and the
// host-side learning-rate schedules. Semantics follow torch.optim.AdamW,
// torch.nn.utils.clip_grad_norm_ and transformers' get_scheduler (SPEC.md
// sections 3 and 8). The Optimizer owns its moments and scratch buffers only.
package optim
