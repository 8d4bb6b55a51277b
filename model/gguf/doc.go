// Package gguf reads and writes GGUF version 3 files, the model format of
// llama.cpp (and so of Ollama and LM Studio): a little-endian header with
// typed metadata (key, value) pairs, tensor infos (name, dimensions fastest
// first, ggml type, offset), and a data section whose tensor offsets are
// relative to its start and aligned to general.alignment (32 by default).
//
// It owns the container and the ggml block codecs the project reads or
// writes (F32, F16, BF16, Q8_0, Q4_0, Q4_1; quantizing to Q8_0 and Q4_0 the
// way ggml-quants.c's reference functions round). It knows nothing of model
// architectures: package llamacpp maps HF checkpoints onto GGUF names.
//
// Like package safetensors it reads lazily (the header when opened, each
// tensor with ReadAt when asked for) and validates strictly: every size is
// checked against the file's length before anything is allocated, and every
// error names the file and the key or tensor, so a truncated download, an
// unknown tensor type or a value of the wrong type is reported, never a
// panic.
package gguf
