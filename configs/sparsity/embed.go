// Package sparsity holds the shipped SparseLoRA sparsity tables, one YAML file
// per model and task in the reference implementation's format (z-lab/sparselora
// configs/sparsity), embedded so the binary needs no data files beside it.
// Package predictor parses them; see predictor.BuiltinSparsityConfig.
package sparsity

import "embed"

// Files holds every *.yaml file of this folder at the root of the FS.
//
//go:embed *.yaml
var Files embed.FS
