#!/usr/bin/env bash
# GGUF export times and, for the tiny model fine-tuned by the demo, exact match of its f32, q8_0
# and q4_0 GGUF exports when llama.cpp generates (node-llama-cpp, CPU) against sparselora
# generating from the same files; the numbers in BENCHMARKS.md come from here.
#
#   scripts/gguf-bench.sh [DEMO_DIR]
#
# DEMO_DIR is a `sparselora demo --out DIR` run (default runs/demo: make run); its held-out
# eval.jsonl and dense adapter are used. Answers are numeric (the arith and lookup tasks), scored
# as evaluate.Match scores numbers: the last number of the completion; the script checks that
# this scoring of sparselora's own completions gives `sparselora eval`'s count.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:-runs/demo}
bin=bin/sparselora
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
adapter="$demo/dense-lora"
[ -f "$adapter/adapter_model.safetensors" ] || { echo "no dense adapter in $adapter (run make run, or sparselora demo --out $demo)" >&2; exit 1; }
export XDG_CACHE_HOME="$out/cache" NODE_LLAMA_CPP_DIR=.cache/node-llama-cpp
# The user cache folder moved: point at the WebGPU library directly.
export SPARSELORA_WEBGPU_LIB=${SPARSELORA_WEBGPU_LIB:-$(ls "$PWD"/.cache/dawn/*/*webgpu* | head -1)}

echo "| export (models/tiny + demo adapter) | dtype | seconds | MB |"
echo "|---|---|---|---|"
for dtype in f32 f16 q8_0 q4_0; do
  start=$(date +%s.%N)
  $bin export gguf --model models/tiny --adapter "$adapter" --dtype "$dtype" --out "$out/tiny-$dtype.gguf" >/dev/null
  end=$(date +%s.%N)
  awk -v d="$dtype" -v s="$start" -v e="$end" -v b="$(wc -c < "$out/tiny-$dtype.gguf")" \
    'BEGIN { printf "| merged | %s | %.3f | %.2f |\n", d, e - s, b / 1e6 }'
done

echo
echo "| GGUF | held-out | sparselora exact match | llama.cpp exact match | identical completions |"
echo "|---|---|---|---|---|"
n=$(grep -c . "$demo/eval.jsonl")
for dtype in f32 q8_0 q4_0; do
  model="$out/tiny-$dtype.gguf"
  ours_em=$($bin eval --model "$model" --data "$demo/eval.jsonl" --metric exact-match --max-new-tokens 32 2>/dev/null |
    grep -o 'exact match: [0-9]* / [0-9]*' | head -1)
  $bin generate --model "$model" --data "$demo/eval.jsonl" --max-new-tokens 32 --json 2>/dev/null > "$out/ours.jsonl"
  node - "$model" "$demo/eval.jsonl" "$out/ours.jsonl" "$ours_em" "$dtype" <<'JS'
const fs = require("node:fs");
const {execFileSync} = require("node:child_process");
const [model, evalPath, oursPath, oursEM, dtype] = process.argv.slice(2);
const lines = s => fs.readFileSync(s, "utf8").split("\n").filter(l => l.trim()).map(l => JSON.parse(l));
const examples = lines(evalPath), ours = lines(oursPath);
const req = {model, prompts: ours.map(o => o.prompt_ids), maxTokens: 32};
const theirs = JSON.parse(execFileSync("node", ["scripts/llamacpp.mjs"], {input: JSON.stringify(req)})).completions;
// llama.cpp's ids decoded by sparselora's tokenizer (generate stops before the EOS).
const eos = 256;
const cut = ids => ids.includes(eos) ? ids.slice(0, ids.indexOf(eos)) : ids;
const decodeIn = theirs.map(ids => JSON.stringify({ids: cut(ids)})).join("\n") + "\n";
const texts = execFileSync("bin/sparselora", ["tokenize", "--tokenizer", "models/tiny"], {input: decodeIn}).toString()
  .split("\n").filter(l => l.trim()).map(l => JSON.parse(l).text);
const lastNumber = s => { const m = s.replace(/,/g, "").match(/-?\d+(\.\d+)?/g); return m ? Number(m[m.length - 1]) : NaN; };
const correct = texts => texts.filter((t, i) => lastNumber(t) === Number(examples[i].answer)).length;
const oursCorrect = correct(ours.map(o => o.text));
if (!oursEM.startsWith(`exact match: ${oursCorrect} /`)) throw new Error(`scoring mismatch: ${oursEM} vs ${oursCorrect}`);
const same = ours.filter((o, i) => JSON.stringify(o.ids) === JSON.stringify(cut(theirs[i]))).length;
console.log(`| tiny + demo adapter, ${dtype} | ${ours.length} | ${oursCorrect}/${ours.length} | ${correct(texts)}/${ours.length} | ${same}/${ours.length} |`);
JS
done
