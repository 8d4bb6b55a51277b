// Package model owns the LLaMA-family decoder (LLaMA, Mistral, Qwen2) on the
// GPU: reading HF config.json (both transformers 4 and 5 layouts) and
// safetensors checkpoints, uploading frozen weights as f32 or bf16, and the
// explicit forward and backward pass of every layer, llm.c style: embedding,
// RMSNorm, RoPE, causal GQA attention, SwiGLU, the chunked LM head with
// cross-entropy, each a small kernel in package shaders with its wrapper and a
// float64 CPU reference in its test. Backward computes activation gradients
// through the frozen weights and hands each projection's gradient to its
// Adapter (implemented by package lora); frozen weights never get gradients.
//
// Activations are f32 rows of [tokens, features] with tokens = batch*seq and
// right padding; ids, masks and loss targets are u32 words stored in tensors
// typed F32 (package gpu has no integer dtype).
package model
