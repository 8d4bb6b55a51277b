package predictor

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// SourcesKey follows the files' identity (path, size, time, header);
// SourcesContentHash their bytes, whatever folder holds them.
func TestSourcesKeyAndContentHash(t *testing.T) {
	write := func(dir string, v float32) []model.SourceFile {
		path := filepath.Join(dir, "model.safetensors")
		tensor, _ := safetensors.NewFloatTensor(safetensors.F32, []int{2}, []float32{1, v})
		if err := safetensors.WriteFile(path, map[string]safetensors.Tensor{"w": tensor}, nil); err != nil {
			t.Fatal(err)
		}
		stamp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		os.Chtimes(path, stamp, stamp)
		st, _ := os.Stat(path)
		return []model.SourceFile{{Path: path, Size: st.Size(), ModTime: st.ModTime()}}
	}
	ctx := context.Background()
	a, copied, edited := write(t.TempDir(), 2), write(t.TempDir(), 2), write(t.TempDir(), 3)
	keyA, errA := SourcesKey(a)
	keyCopy, errCopy := SourcesKey(copied)
	if errA != nil || errCopy != nil || keyA == keyCopy {
		t.Errorf("keys of a model and its copy elsewhere: %s %s (%v, %v); want them to differ by the path", keyA, keyCopy, errA, errCopy)
	}
	hashA, _ := SourcesContentHash(ctx, a)
	hashCopy, _ := SourcesContentHash(ctx, copied)
	hashEdited, err := SourcesContentHash(ctx, edited)
	if err != nil || hashA != hashCopy || hashA == hashEdited {
		t.Errorf("content hashes: %s, copy %s, edited %s (%v); want the copy equal and the edit different", hashA, hashCopy, hashEdited, err)
	}
	// A file changed since the model was loaded is named.
	later := a[0].ModTime.Add(time.Second)
	os.Chtimes(a[0].Path, later, later)
	if _, err := SourcesKey(a); err == nil {
		t.Error("a file touched since loading gave a key")
	}
}
