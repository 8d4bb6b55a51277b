// Package llamacpp converts between this project's formats (Hugging Face
// checkpoints, PEFT adapters, tokenizer.json) and llama.cpp's GGUF files, the
// format llama.cpp, Ollama and LM Studio run (SPEC §13):
//
//   - Export writes a base model, or a base with a LoRA adapter merged in,
//     as a GGUF model with its configuration and tokenizer as metadata, or
//     the adapter alone as llama.cpp's LoRA adapter GGUF.
//   - ToHF turns a GGUF model (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors) back
//     into an HF checkpoint directory with config.json and the tokenizer
//     files, so every command that takes --model runs on it: float tensors
//     become float32, Q8_0/Q4_0/Q4_1 weights MLX's group-affine codes (the
//     same values, kept quantized on the GPU).
//
// Tensor names map HF's onto llama.cpp's (model.layers.N.self_attn.q_proj ->
// blk.N.attn_q); weights keep their bytes (an HF [out, in] weight is ggml ne
// [in, out]) except that q_proj and k_proj rows are permuted for llama.cpp's
// rotary layout in the `llama` architecture (undone on the way back).
package llamacpp
