// Runs llama.cpp (node-llama-cpp, CPU, no network) on a GGUF model for the
// llamacpp package's tests: reads a JSON request on stdin, prints one JSON
// result on stdout.
//
// request: {"model": "m.gguf", "lora": "a.gguf" (optional), "loraScale": 1,
//           "tokenize": ["text", ...], "prompts": [[ids], ...], "maxTokens": 16}
// result:  {"tokens": [[ids], ...], "completions": [[ids], ...]}
//
// Tokenizing adds no special tokens; a completion is the greedy continuation
// of a prompt's ids (stopping early only at an end-of-generation token,
// which is included).
//
// node-llama-cpp is found in $NODE_LLAMA_CPP_DIR (the folder holding its
// node_modules), installed by scripts/setup.sh into .cache/node-llama-cpp.
import {createRequire} from "node:module";
import path from "node:path";
import {pathToFileURL} from "node:url";

process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
process.env.NODE_LLAMA_CPP_GPU = "false";
const dir = process.env.NODE_LLAMA_CPP_DIR;
if (!dir) throw new Error("NODE_LLAMA_CPP_DIR is not set");
const require = createRequire(path.join(path.resolve(dir), "package.json"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);

let input = "";
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);

const llama = await getLlama({gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true,
                              logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: req.model});
const out = {tokens: [], completions: []};
for (const text of req.tokenize ?? []) out.tokens.push(Array.from(model.tokenize(text, false)));
if ((req.prompts ?? []).length > 0) {
  // One thread: ggml's worker threads spin-wait on each other, which on a loaded
  // machine with few cores turns a millisecond decode into minutes.
  const options = {contextSize: 256, sequences: 1, threads: 1};
  if (req.lora) options.lora = {adapters: [{filePath: req.lora, scale: req.loraScale ?? 1}]};
  const context = await model.createContext(options);
  const sequence = context.getSequence();
  for (const prompt of req.prompts) {
    await sequence.clearHistory();
    const ids = [];
    for await (const id of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
      ids.push(id);
      if (ids.length >= (req.maxTokens ?? 16) || model.isEogToken(id)) break;
    }
    out.completions.push(ids);
  }
  await context.dispose();
}
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify(out) + "\n");
