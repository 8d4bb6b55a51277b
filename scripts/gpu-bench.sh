#!/usr/bin/env bash
# Runs the reference benchmarks on a machine with a GPU and writes the reports to
# ${OUT:-.}: the adapter listing, `bench gemm` at the issue's shapes (f32 and
# bf16 weights, with SparseLoRA-style gathers), and `bench step` at the paper's
# workload. Expects a prebuilt bin/sparselora and .cache/dawn/ beside it; if a
# .gl/ folder of Vulkan loader .deb files is present (headless CUDA images lack
# them), it unpacks them first. Record the printed figures in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
if ! ldconfig -p | grep -q libvulkan && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
bin/sparselora devices | tee "$out/devices.txt"
bin/sparselora bench gemm --shapes 4096x4096x4096,2048x11008x4096,2048x14336x4096 \
  --gather m=0.75,n=0.25 --json "$out/bench-gemm-f32.json" | tee "$out/bench-gemm.txt"
bin/sparselora bench gemm --shapes 4096x4096x4096,2048x11008x4096 --bf16 \
  --gather m=0.75,n=0.25 --json "$out/bench-gemm-bf16.json" | tee -a "$out/bench-gemm.txt"
bin/sparselora bench step --shape llama3-8b --layers "${STEP_LAYERS:-8}" --batch 8 --seq 512 --output-tokens 128 \
  --sparsity llama3-8b-math10k --rank 32 --targets q,k,v,o --reps 3 --json "$out/bench-step.json" | tee "$out/bench-step.txt"
