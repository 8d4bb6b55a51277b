package predictor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/model"
)

// SourcesKey is the hex SHA-256 of what identifies a model's checkpoint
// files without reading a weight, as the SVD cache keys them: each file's
// absolute path, size, modification time and safetensors header (the index
// file's whole text). It fails, naming the file, when a file changed since the
// model was loaded.
func SourcesKey(sources []model.SourceFile) (string, error) {
	h := sha256.New()
	if err := hashSources(h, sources); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SourcesContentHash is the hex SHA-256 of the checkpoint files' bytes, each
// file by its base name (so a copied or moved model hashes the same). It reads
// every file whole.
func SourcesContentHash(ctx context.Context, sources []model.SourceFile) (string, error) {
	h := sha256.New()
	sorted := slices.SortedFunc(slices.Values(sources), func(a, b model.SourceFile) int {
		return strings.Compare(baseName(a.Path), baseName(b.Path))
	})
	for _, src := range sorted {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		fmt.Fprintf(h, "file %q\n", baseName(src.Path))
		f, err := os.Open(src.Path)
		if err != nil {
			return "", fmt.Errorf("checkpoint file %w", err)
		}
		_, err = io.Copy(h, contextReader{ctx, f})
		f.Close()
		if err != nil {
			return "", fmt.Errorf("checkpoint file %s: %w", src.Path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func baseName(path string) string { return filepath.Base(path) }

// contextReader stops a long read when ctx ends.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
