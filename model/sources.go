package model

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sparselora/sparselora/model/safetensors"
)

// SourceFile identifies one checkpoint file by its absolute path, size and
// modification time, as Load found them before reading any weight.
type SourceFile struct {
	Path    string
	Size    int64
	ModTime time.Time
}

// sourceFiles lists the files of ckpt: the safetensors file, or the index and
// its shards. Load calls it after reading the headers and before reading any
// weight, so a file changed while the weights are read shows a later time
// stamp than the one recorded.
func sourceFiles(ckpt safetensors.Reader) ([]SourceFile, error) {
	paths := []string{ckpt.Path()}
	if sharded, ok := ckpt.(*safetensors.Sharded); ok {
		paths = append(paths, sharded.Shards()...)
	}
	files := make([]SourceFile, 0, len(paths))
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("model: checkpoint file %s: %w", p, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("model: checkpoint file: %w", err)
		}
		files = append(files, SourceFile{Path: abs, Size: st.Size(), ModTime: st.ModTime()})
	}
	return files, nil
}
