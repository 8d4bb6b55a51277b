#!/usr/bin/env bash
# Rebuilds the built-in base model, models/tiny, with sparselora itself: a generated pretraining
# corpus (sparselora data corpus), a byte-level BPE tokenizer of 512 ids trained on it, and
# full-parameter training from random weights (configs/tiny/config.json) for one run of STEPS
# optimizer steps. Deterministic for a given machine's GPU arithmetic: the data, the tokenizer and
# the initial weights follow from the seeds. models/tiny/sparsity.yaml is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin/sparselora}
work=${WORK:-runs/base-model}
steps=${STEPS:-400}
rm -rf "$work"
mkdir -p "$work"
"$bin" data corpus --n 8000 --seed 1 --out "$work/corpus.jsonl"
"$bin" data tokenizer --corpus "$work/corpus.jsonl" --vocab 512 --out "$work/tokenizer"
printf '{\n  "bos_token_id": 257,\n  "eos_token_id": 256\n}\n' > "$work/tokenizer/generation_config.json"
start=$(date +%s)
"$bin" train --full --init-config configs/tiny/config.json --tokenizer "$work/tokenizer" \
  --data "$work/corpus.jsonl" --out "$work/model" --batch-size 16 --max-steps "$steps" \
  --lr 3e-3 --schedule cosine --warmup-steps 20 --weight-decay 0.01 --seed 42 --log-every 20 --no-window
echo "base-model: pretraining took $(( $(date +%s) - start )) s"
mkdir -p models/tiny
for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
  cp "$work/model/$f" "models/tiny/$f"
done
echo "base-model: wrote models/tiny (plots and metrics of the run in $work/model)"
