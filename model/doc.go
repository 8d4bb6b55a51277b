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
//
// Ownership: a Model owns its weights and Release frees them; the adapters
// attached to its layers belong to whoever made them (package lora or full),
// the model only calls them. A Workspace owns the activations and scratch of
// one batch shape, reused by every pass: Forward overwrites them and Backward
// reads the last Forward's, so two passes that must not disturb each other
// (training and evaluation) use two workspaces. The tensors a workspace hands
// out (Loss, Hidden) are views into it: read them, never release them. The
// SparseLoRA selector is an argument of Forward (nil: dense), and the index
// lists it returns belong to it.
package model
