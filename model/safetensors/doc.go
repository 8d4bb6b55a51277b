// Package safetensors reads and writes checkpoints in the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header that maps each tensor name to its dtype, shape and
// byte range, and the raw tensor bytes.
//
// It owns everything the trainer does with weight files on disk: opening a
// single file or a sharded checkpoint (model.safetensors.index.json), reading
// tensors by name (raw, or widened to float32 from F32, BF16 and F16), and
// writing adapters and caches atomically.
//
// The format is small enough that a dependency would buy little, and the
// trainer needs two things generic readers do not give together:
//
//   - Lazy reads. A file is opened by reading its header only; each tensor is
//     read with ReadAt when asked for, so a multi-gigabyte checkpoint is never
//     held in memory whole and several goroutines may read from one File.
//   - Strict validation. Every header is checked when the file is opened the
//     way the reference implementation checks it (known dtypes, byte sizes
//     that match the shapes, contiguous non-overlapping ranges that exactly
//     cover the data region), and every error names the file and, where there
//     is one, the tensor, so a corrupt or truncated download is reported
//     before any training starts rather than as a wrong result later.
package safetensors
