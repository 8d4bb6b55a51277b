package safetensors

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Standard file names of a Hugging Face checkpoint directory.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// Sharded is a checkpoint split over several safetensors files and tied
// together by an index (model.safetensors.index.json). Like File it reads
// tensors lazily; it holds one open handle per shard.
type Sharded struct {
	indexPath string
	shards    []*File          // sorted by path
	owner     map[string]*File // tensor name -> the shard holding it
	names     []string
}

var _ Reader = (*Sharded)(nil)

// shardIndex is the index file's layout. Its "metadata" (total_size etc.) is
// informational and not needed to read tensors.
type shardIndex struct {
	WeightMap map[string]string `json:"weight_map"`
}

// OpenSharded opens the index at indexPath and every shard it names, checking
// that each tensor of the weight map is in the shard it is mapped to. Tensors
// a shard holds beyond the weight map are served too (transformers loads every
// tensor of every listed shard), but a name held by two shards is an error,
// since which copy wins would be arbitrary.
func OpenSharded(indexPath string) (*Sharded, error) {
	data, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	var index shardIndex
	if err := json.Unmarshal(data, &index); err != nil {
		return nil, fmt.Errorf("safetensors: %s: malformed index: %v", indexPath, err)
	}
	if len(index.WeightMap) == 0 {
		return nil, fmt.Errorf("safetensors: %s: index has no weight_map entries", indexPath)
	}

	s := &Sharded{indexPath: indexPath, owner: map[string]*File{}}
	if err := s.open(index.WeightMap); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Sharded) open(weightMap map[string]string) error {
	dir := filepath.Dir(s.indexPath)
	// Visit tensors in sorted order so the first error reported is stable.
	names := make([]string, 0, len(weightMap))
	for name := range weightMap {
		names = append(names, name)
	}
	slices.Sort(names)

	byShard := map[string]*File{}
	for _, name := range names {
		shardName := weightMap[name]
		if shard, ok := byShard[shardName]; ok {
			if err := s.checkMapped(name, shard); err != nil {
				return err
			}
			continue
		}
		// A shard must live beside the index; an absolute or "../" name
		// would read files outside the checkpoint.
		if !filepath.IsLocal(shardName) {
			return fmt.Errorf("safetensors: %s: tensor %q maps to %q, which is not a file name inside the checkpoint directory", s.indexPath, name, shardName)
		}
		shardPath := filepath.Join(dir, shardName)
		shard, err := Open(shardPath)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("safetensors: %s: tensor %q maps to shard %s, which is missing", s.indexPath, name, shardPath)
		}
		if err != nil {
			return fmt.Errorf("safetensors: %s: shard for tensor %q: %w", s.indexPath, name, err)
		}
		byShard[shardName] = shard
		s.shards = append(s.shards, shard)
		if err := s.checkMapped(name, shard); err != nil {
			return err
		}
	}

	slices.SortFunc(s.shards, func(a, b *File) int { return cmp.Compare(a.path, b.path) })
	for _, shard := range s.shards {
		for _, name := range shard.names {
			if other, dup := s.owner[name]; dup {
				return fmt.Errorf("safetensors: %s: tensor %q is in both %s and %s", s.indexPath, name, other.path, shard.path)
			}
			s.owner[name] = shard
			s.names = append(s.names, name)
		}
	}
	slices.Sort(s.names)
	return nil
}

func (s *Sharded) checkMapped(name string, shard *File) error {
	if _, ok := shard.tensors[name]; !ok {
		return fmt.Errorf("safetensors: %s: tensor %q maps to shard %s, which does not contain it", s.indexPath, name, shard.path)
	}
	return nil
}

// Path is the index file's path.
func (s *Sharded) Path() string { return s.indexPath }

// Names lists the tensors of all shards, sorted.
func (s *Sharded) Names() []string { return slices.Clone(s.names) }

// Shards lists the shard files' paths, sorted.
func (s *Sharded) Shards() []string {
	paths := make([]string, len(s.shards))
	for i, shard := range s.shards {
		paths[i] = shard.path
	}
	return paths
}

func (s *Sharded) shardOf(name string) (*File, error) {
	shard, ok := s.owner[name]
	if !ok {
		return nil, fmt.Errorf("safetensors: %s: tensor %q: %w", s.indexPath, name, ErrNotFound)
	}
	return shard, nil
}

// Info describes a tensor; TensorInfo.Path names its shard.
func (s *Sharded) Info(name string) (TensorInfo, error) {
	shard, err := s.shardOf(name)
	if err != nil {
		return TensorInfo{}, err
	}
	return shard.Info(name)
}

// ReadRaw reads a tensor's bytes as stored.
func (s *Sharded) ReadRaw(name string) ([]byte, error) {
	shard, err := s.shardOf(name)
	if err != nil {
		return nil, err
	}
	return shard.ReadRaw(name)
}

// ReadFloat32 reads a F32, BF16 or F16 tensor as float32 values.
func (s *Sharded) ReadFloat32(name string) ([]float32, error) {
	shard, err := s.shardOf(name)
	if err != nil {
		return nil, err
	}
	return shard.ReadFloat32(name)
}

// Close closes every shard.
func (s *Sharded) Close() error {
	var errs []error
	for _, shard := range s.shards {
		errs = append(errs, shard.Close())
	}
	return errors.Join(errs...)
}

// OpenDir opens the checkpoint in a Hugging Face model directory: the sharded
// one if dir holds model.safetensors.index.json, else model.safetensors.
func OpenDir(dir string) (Reader, error) {
	indexPath := filepath.Join(dir, IndexFileName)
	if _, err := os.Stat(indexPath); err == nil {
		return OpenSharded(indexPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	single := filepath.Join(dir, SingleFileName)
	if _, err := os.Stat(single); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: %s: no %s or %s in the directory", dir, SingleFileName, IndexFileName)
	}
	f, err := Open(single)
	if err != nil {
		return nil, err
	}
	return f, nil
}
