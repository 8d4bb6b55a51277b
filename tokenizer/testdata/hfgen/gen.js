// Regenerates ../hf_components.json: outputs of Hugging Face `tokenizers` (the npm package
// tokenizers@0.23.2, the same Rust library as the Python fixtures' tokenizers 0.23.2) for small
// tokenizer.json files exercising each supported component, and for the three real tokenizers
// on random hard strings. Run from the repository root after `make setup`:
//   (cd /tmp && npm install tokenizers@0.23.2) && NODE_PATH=/tmp/node_modules node tokenizer/testdata/hfgen/gen.js
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const here = __dirname;
const specs = JSON.parse(fs.readFileSync(path.join(here, 'specs.json'), 'utf8'));

// Deterministic PRNG (mulberry32).
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pieces = ['a', 'Z', 'é', 'e\u0301', '日本', 'ß', "'s", "'LL", "'", 'the', ' the', 'Hello', '0', '7', '123', '45678',
  '٣', '½', ' ', '  ', '   ', '\t', '\n', '\r\n', '\n\n', '\u00a0', '\u3000', '.', ',', '(', ')', '😀', '👍🏽',
  '\u200d', '_', '-', '<s>', '</s>', '<unk>', '<mask>', '[X]', 'foo', 'bar', 'BAR', '<|im_start|>', '<|im_end|>',
  '<|begin_of_text|>', '<think>', 'ﬁ', 'Ⅻ', '\u2581', 'hello', 'world', 'lol', 'x', '\u{1D518}'];
function randomTexts(n, seed, maxPieces = 12) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    let s = '';
    const k = 1 + Math.floor(r() * maxPieces);
    for (let j = 0; j < k; j++) s += pieces[Math.floor(r() * pieces.length)];
    out.push(s);
  }
  return out;
}
const fixed = ['', ' ', 'Hello world', ' Hello  world ', 'foo bar foobar barfoo BAR', 'a<mask>b <mask> c',
  'x [X]  y', '<s>hello</s>', 'hello <s> world', 'Call 911 or 12345 now', "we'll see, it's fine"];

async function main() {
  const result = { generator: 'tokenizers (npm) 0.23.2', tokenizers: [] };
  for (const spec of specs) {
    let json = spec.json;
    if (spec.file) json = fs.readFileSync(spec.file, 'utf8');
    else json = JSON.stringify(json);
    const tok = Tokenizer.fromString(json);
    let texts = fixed.concat(randomTexts(spec.random, spec.seed));
    if (spec.file) texts = texts.concat(randomTexts(4, spec.seed + 1, 400)); // long texts

    const cases = [];
    for (const text of texts) {
      const plain = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
      const special = Array.from((await tok.encode(text, null, { addSpecialTokens: true })).getIds());
      cases.push({
        text, ids: plain, ids_with_special: special,
        decoded: await tok.decode(special, false),
        decoded_skip_special: await tok.decode(special, true),
      });
    }
    result.tokenizers.push({ name: spec.name, file: spec.file || null, json: spec.file ? null : spec.json, cases });
  }
  fs.writeFileSync(path.join(here, '..', 'hf_components.json'), JSON.stringify(result) + '\n');
}
main().catch((e) => { console.error(e); process.exit(1); });
