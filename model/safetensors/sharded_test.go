package safetensors

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// shardFixture splits a fixture checkpoint into two shard files in a new
// folder and returns the folder and the weight map (without writing the index).
func shardFixture(t *testing.T, name, variant string) (string, map[string]string) {
	t.Helper()
	f, err := Open(fixtureModel(t, name, variant))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	shards := []map[string]Tensor{{}, {}}
	weightMap := map[string]string{}
	for i, tensor := range f.Names() {
		info, _ := f.Info(tensor)
		data, err := f.ReadRaw(tensor)
		if err != nil {
			t.Fatal(err)
		}
		shards[i%2][tensor] = Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
		weightMap[tensor] = shardName(i % 2)
	}
	for i, tensors := range shards {
		if err := WriteFile(filepath.Join(dir, shardName(i)), tensors, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	return dir, weightMap
}

func shardName(i int) string {
	return []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[i]
}

func writeIndex(t *testing.T, dir string, weightMap map[string]string) string {
	t.Helper()
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 123}, "weight_map": weightMap})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, IndexFileName)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestOpenSharded(t *testing.T) {
	dir, weightMap := shardFixture(t, "llama-gqa", "model")
	indexPath := writeIndex(t, dir, weightMap)

	ckpt, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	sharded, ok := ckpt.(*Sharded)
	if !ok {
		t.Fatalf("OpenDir returned %T, want *Sharded", ckpt)
	}
	if sharded.Path() != indexPath || len(sharded.Shards()) != 2 {
		t.Errorf("Path() = %s, Shards() = %v", sharded.Path(), sharded.Shards())
	}

	single, err := Open(fixtureModel(t, "llama-gqa", "model"))
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	if !slices.Equal(ckpt.Names(), single.Names()) {
		t.Fatalf("sharded names differ from the single file's")
	}
	for _, name := range single.Names() {
		info, err := ckpt.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, weightMap[name]); info.Path != want {
			t.Errorf("%s: Path %s, want %s", name, info.Path, want)
		}
		got, err := ckpt.ReadFloat32(name)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := single.ReadFloat32(name)
		if !slices.Equal(got, want) {
			t.Errorf("%s: sharded values differ", name)
		}
	}
	if _, err := ckpt.Info("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), indexPath) {
		t.Errorf("Info(missing) = %v, want ErrNotFound naming the index", err)
	}
}

func TestOpenDirSingleFile(t *testing.T) {
	dir := filepath.Dir(fixtureModel(t, "qwen2-bias", "model"))
	ckpt, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	if _, ok := ckpt.(*File); !ok || len(ckpt.Names()) != 26 {
		t.Errorf("OpenDir(%s) = %T with %d tensors", dir, ckpt, len(ckpt.Names()))
	}
	empty := t.TempDir()
	if _, err := OpenDir(empty); err == nil || !strings.Contains(err.Error(), empty) {
		t.Errorf("OpenDir(empty folder) = %v, want an error naming it", err)
	}
}

func TestOpenShardedErrors(t *testing.T) {
	t.Run("missing shard", func(t *testing.T) {
		dir, weightMap := shardFixture(t, "llama-gqa", "model")
		indexPath := writeIndex(t, dir, weightMap)
		missing := filepath.Join(dir, shardName(1))
		os.Remove(missing)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, missing, "missing")
	})
	t.Run("tensor not in its shard", func(t *testing.T) {
		dir, weightMap := shardFixture(t, "llama-gqa", "model")
		const tensor = "model.norm.weight"
		weightMap[tensor] = shardName(1 - slices.Index([]string{shardName(0), shardName(1)}, weightMap[tensor]))
		indexPath := writeIndex(t, dir, weightMap)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, filepath.Join(dir, weightMap[tensor]), `"`+tensor+`"`, "does not contain")
	})
	t.Run("tensor in two shards", func(t *testing.T) {
		dir, weightMap := shardFixture(t, "llama-gqa", "model")
		extra, _ := NewFloatTensor(F32, []int{64}, make([]float32, 64))
		// Rewrite shard 1 with a copy of a tensor shard 0 also holds.
		f, _ := Open(filepath.Join(dir, shardName(1)))
		tensors := map[string]Tensor{}
		for _, name := range f.Names() {
			info, _ := f.Info(name)
			data, _ := f.ReadRaw(name)
			tensors[name] = Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
		}
		f.Close()
		var dup string
		for name, shard := range weightMap {
			if shard == shardName(0) && strings.HasSuffix(name, "norm.weight") {
				dup = name
				break
			}
		}
		tensors[dup] = extra
		if err := WriteFile(filepath.Join(dir, shardName(1)), tensors, nil); err != nil {
			t.Fatal(err)
		}
		indexPath := writeIndex(t, dir, weightMap)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, `"`+dup+`"`, "in both")
	})
	t.Run("shard outside the folder", func(t *testing.T) {
		dir, weightMap := shardFixture(t, "llama-gqa", "model")
		weightMap["model.norm.weight"] = "../elsewhere.safetensors"
		indexPath := writeIndex(t, dir, weightMap)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, `"model.norm.weight"`, "../elsewhere.safetensors")
	})
	t.Run("corrupt shard", func(t *testing.T) {
		dir, weightMap := shardFixture(t, "llama-gqa", "model")
		indexPath := writeIndex(t, dir, weightMap)
		shard := filepath.Join(dir, shardName(0))
		st, _ := os.Stat(shard)
		os.Truncate(shard, st.Size()-4)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, shard, "truncated")
	})
	t.Run("malformed index", func(t *testing.T) {
		indexPath := filepath.Join(t.TempDir(), IndexFileName)
		os.WriteFile(indexPath, []byte(`{"weight_map": [`), 0o644)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, "malformed index")
	})
	t.Run("empty weight map", func(t *testing.T) {
		indexPath := writeIndex(t, t.TempDir(), map[string]string{})
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath, "no weight_map")
	})
	t.Run("missing index", func(t *testing.T) {
		indexPath := filepath.Join(t.TempDir(), IndexFileName)
		_, err := OpenSharded(indexPath)
		wantErr(t, err, indexPath)
	})
}

func wantErr(t *testing.T, err error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", fragments)
	}
	for _, want := range fragments {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
