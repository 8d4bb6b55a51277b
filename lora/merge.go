// This file folds a PEFT LoRA adapter into its base model on the host:
// W' = W + scale * B A for every adapted projection, written out as a plain
// Hugging Face checkpoint directory that needs neither PEFT nor sparselora to
// load. It runs on the CPU because a merge is a one-off pass over every weight
// of the checkpoint, bounded by disk reads, and must work for models larger
// than any device's memory.

package lora

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// DefaultMaxShardBytes is the largest safetensors file Merge writes before it
// shards the checkpoint: transformers' save_pretrained default of "5GB"
// (decimal gigabytes).
const DefaultMaxShardBytes int64 = 5_000_000_000

// MergeOptions tunes Merge. The zero value keeps every tensor's dtype, shards
// like transformers and refuses to replace an existing output.
type MergeOptions struct {
	// Dtype is the output dtype of every floating-point tensor: F32 or BF16.
	// Empty keeps each tensor's own dtype, so unmerged tensors are copied
	// byte for byte.
	Dtype safetensors.Dtype
	// MaxShardBytes is the largest safetensors file to write; a checkpoint
	// above it is split into model-0000i-of-0000n.safetensors files with a
	// model.safetensors.index.json. 0 means DefaultMaxShardBytes.
	MaxShardBytes int64
	// Force replaces an existing non-empty output directory.
	Force bool
}

// MergeReport describes a finished merge.
type MergeReport struct {
	OutDir string
	Rank   int
	Alpha  float64
	RSLoRA bool
	// Scale is the factor applied to B A: alpha/r, or alpha/sqrt(r) with RSLoRA.
	Scale float64
	// Merged lists the base weights that received B A, in checkpoint order.
	Merged []string
	// Tensors is the number of tensors written and TensorBytes their data size.
	Tensors     int
	TensorBytes int64
	// Files lists what the output directory holds, safetensors files first.
	Files []string
	// Warnings are model.VerifyCheckpoint's remarks on the base checkpoint
	// (such as tensors the model does not use, which are copied unchanged).
	Warnings []string
	// BaseQuantized is the base's MLX quantization (nil for a float base): its
	// weights were dequantized, merged and written as Dtype.
	BaseQuantized *model.Quantization
	// Dtype is the output dtype of the floating-point tensors (empty: each
	// tensor's own).
	Dtype safetensors.Dtype
}

// Merge folds the LoRA adapter in adapterDir (PEFT format) into the model in
// modelDir (HF format) and writes the result to outDir as an HF checkpoint:
// config.json (its dtype fields updated when opts.Dtype converts), the
// safetensors weights (sharded above opts.MaxShardBytes) and the tokenizer and
// generation files. The product B A is accumulated in float64 and added to W
// before a single rounding to the output dtype. The output is assembled in a
// temporary directory beside outDir and renamed into place at the end, so
// outDir never holds a partial checkpoint.
func Merge(ctx context.Context, modelDir, adapterDir, outDir string, opts MergeOptions) (MergeReport, error) {
	switch opts.Dtype {
	case "", safetensors.F32, safetensors.BF16:
	default:
		return MergeReport{}, fmt.Errorf("lora: merge: output dtype %q is not supported (want F32 or BF16)", opts.Dtype)
	}
	if opts.MaxShardBytes < 0 {
		return MergeReport{}, fmt.Errorf("lora: merge: negative shard size %d", opts.MaxShardBytes)
	}
	if opts.MaxShardBytes == 0 {
		opts.MaxShardBytes = DefaultMaxShardBytes
	}
	for _, d := range []struct{ flag, dir string }{{"model", modelDir}, {"adapter", adapterDir}} {
		if st, err := os.Stat(d.dir); err != nil {
			return MergeReport{}, fmt.Errorf("lora: merge: %s directory: %w", d.flag, err)
		} else if !st.IsDir() {
			return MergeReport{}, fmt.Errorf("lora: merge: %s directory %s is not a directory", d.flag, d.dir)
		}
		if sameDir(d.dir, outDir) {
			return MergeReport{}, fmt.Errorf("lora: merge: output directory %s is the %s directory", outDir, d.flag)
		}
		// Replacing the output removes it whole: never when it holds an input.
		if containsDir(outDir, d.dir) {
			return MergeReport{}, fmt.Errorf("lora: merge: output directory %s contains the %s directory %s", outDir, d.flag, d.dir)
		}
	}
	if err := checkOutDir(outDir, opts.Force); err != nil {
		return MergeReport{}, err
	}

	cfg, err := model.LoadConfig(filepath.Join(modelDir, model.ConfigFileName))
	if err != nil {
		return MergeReport{}, err
	}
	ckpt, err := safetensors.OpenDir(modelDir)
	if err != nil {
		return MergeReport{}, err
	}
	defer ckpt.Close()
	// The checks model.Load makes, so that the output loads too.
	warnings, err := model.VerifyCheckpoint(cfg, ckpt)
	if err != nil {
		return MergeReport{}, err
	}
	var baseQuantized *model.Quantization
	if cfg.Quantization != nil {
		// The merged weights are float: read the base dequantized and write
		// bf16 unless asked for f32, without the quantization config.
		d := cfg.Quantization.Default
		baseQuantized = &d
		ckpt = model.DequantizedReader(cfg, ckpt)
		if opts.Dtype == "" {
			opts.Dtype = safetensors.BF16
		}
	}
	adapterCfg, deltas, err := readAdapter(adapterDir, cfg, ckpt)
	if err != nil {
		return MergeReport{}, err
	}
	plan, err := planTensors(ckpt, deltas, opts)
	if err != nil {
		return MergeReport{}, err
	}
	report := MergeReport{OutDir: outDir, Rank: adapterCfg.Rank, Alpha: adapterCfg.Alpha,
		RSLoRA: adapterCfg.RSLoRA, Scale: adapterCfg.scale(), Warnings: warnings, BaseQuantized: baseQuantized, Dtype: opts.Dtype}

	parent := filepath.Dir(filepath.Clean(outDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return MergeReport{}, fmt.Errorf("lora: merge: cannot create the output directory %s: %w", outDir, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(filepath.Clean(outDir))+".tmp-*")
	if err != nil {
		return MergeReport{}, fmt.Errorf("lora: merge: cannot create the output directory %s in %s: %w", outDir, parent, err)
	}
	defer os.RemoveAll(tmp) // a no-op once the directory has been renamed
	if err := os.Chmod(tmp, 0o755); err != nil {
		return MergeReport{}, fmt.Errorf("lora: merge: %w", err)
	}

	files, err := writeShards(ctx, tmp, ckpt, plan, adapterCfg.scale(), opts.MaxShardBytes)
	if err != nil {
		return MergeReport{}, err
	}
	copied, err := copyCompanions(modelDir, tmp, opts.Dtype, baseQuantized != nil)
	if err != nil {
		return MergeReport{}, err
	}
	if err := publishDir(tmp, outDir, opts.Force); err != nil {
		return MergeReport{}, err
	}
	for _, p := range plan {
		report.Tensors++
		report.TensorBytes += p.outBytes
		if p.delta != nil {
			report.Merged = append(report.Merged, p.name)
		}
	}
	report.Files = append(files, copied...)
	return report, nil
}

// loraDelta is one adapted projection's factors, read from the adapter file.
type loraDelta struct {
	a, b []float32 // A [rank, in], B [out, rank]
	rank int
}

// readAdapter reads adapter_config.json and the A/B pairs of the weight file,
// validated as Load validates them, and returns the pairs keyed by the base
// weight each adapts. Each pair is checked against that weight's shape, so an
// adapter trained for another model is reported by tensor.
func readAdapter(dir string, cfg *model.Config, ckpt safetensors.Reader) (*AdapterConfig, map[string]*loraDelta, error) {
	cfgPath := filepath.Join(dir, ConfigFileName)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, nil, fmt.Errorf("lora: merge: %w", err)
	}
	ac, err := ParseAdapterConfig(raw, cfgPath)
	if err != nil {
		return nil, nil, err
	}
	weightsPath := filepath.Join(dir, WeightsFileName)
	f, err := safetensors.Open(weightsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("lora: merge: %w", err)
	}
	defer f.Close()
	pairs, err := ac.matchWeights(f.Names(), cfg.NumHiddenLayers, weightsPath)
	if err != nil {
		return nil, nil, err
	}
	keys := slices.SortedFunc(maps.Keys(pairs), func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Layer, b.Layer), cmp.Compare(a.Proj, b.Proj))
	})
	deltas := map[string]*loraDelta{}
	for _, k := range keys {
		base := fmt.Sprintf("model.layers.%d.%s.%s.weight", k.Layer, k.Proj.Module(), k.Proj)
		info, err := ckpt.Info(base)
		if err != nil {
			return nil, nil, fmt.Errorf("lora: merge: adapter %s: %w", k.PEFTName(), err)
		}
		out, in := info.Shape[0], info.Shape[1]
		mismatch := func(err error) error {
			// Only a shape says the adapter was trained on another model.
			if _, ok := errors.AsType[*shapeError](err); ok {
				return fmt.Errorf("lora: merge: adapter does not fit base weight %s %v (adapter for a different model?): %w", base, info.Shape, err)
			}
			return fmt.Errorf("lora: merge: adapter for %s: %w", base, err)
		}
		a, err := readShaped(f, pairs[k].A, []int{ac.Rank, in})
		if err != nil {
			return nil, nil, mismatch(err)
		}
		b, err := readShaped(f, pairs[k].B, []int{out, ac.Rank})
		if err != nil {
			return nil, nil, mismatch(err)
		}
		deltas[base] = &loraDelta{a: a, b: b, rank: ac.Rank}
	}
	return ac, deltas, nil
}

// plannedTensor is one tensor of the output: where it comes from, its output
// dtype and size, and the adapter folded into it (nil for a plain copy).
type plannedTensor struct {
	name     string
	info     safetensors.TensorInfo
	dtype    safetensors.Dtype
	outBytes int64
	delta    *loraDelta
}

// planTensors lists the output tensors in checkpoint order (layers by number).
func planTensors(ckpt safetensors.Reader, deltas map[string]*loraDelta, opts MergeOptions) ([]plannedTensor, error) {
	names := ckpt.Names()
	slices.SortStableFunc(names, compareNatural)
	plan := make([]plannedTensor, 0, len(names))
	for _, name := range names {
		info, err := ckpt.Info(name)
		if err != nil {
			return nil, err
		}
		p := plannedTensor{name: name, info: info, dtype: info.Dtype, outBytes: info.NumBytes(), delta: deltas[name]}
		if opts.Dtype != "" && info.Dtype.IsFloat() {
			p.dtype = opts.Dtype
			p.outBytes = info.NumElements() * int64(opts.Dtype.Size())
		}
		plan = append(plan, p)
	}
	return plan, nil
}

// compareNatural orders names with their digit runs compared as numbers, so
// model.layers.2 comes before model.layers.10, as in a PyTorch state dict.
func compareNatural(a, b string) int {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := splitDigits(a)
			nb, rb := splitDigits(b)
			na, nb = strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func splitDigits(s string) (digits, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// shardGroups splits the plan as huggingface_hub does: in order, starting a
// new shard when the next tensor would take the current one over maxBytes (a
// tensor larger than maxBytes gets a shard of its own).
func shardGroups(plan []plannedTensor, maxBytes int64) [][]plannedTensor {
	var groups [][]plannedTensor
	var size int64
	for _, p := range plan {
		if len(groups) == 0 || size > 0 && size+p.outBytes > maxBytes {
			groups = append(groups, nil)
			size = 0
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], p)
		size += p.outBytes
	}
	return groups
}

// shardIndex is model.safetensors.index.json as transformers writes it.
type shardIndex struct {
	Metadata  map[string]int64  `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// writeShards writes the weights into dir, one shard's tensors in memory at a
// time, and returns the file names written.
func writeShards(ctx context.Context, dir string, ckpt safetensors.Reader, plan []plannedTensor, scale float64, maxBytes int64) ([]string, error) {
	groups := shardGroups(plan, maxBytes)
	metadata := map[string]string{"format": "pt"}
	if len(groups) <= 1 {
		return []string{safetensors.SingleFileName}, writeShard(ctx, filepath.Join(dir, safetensors.SingleFileName), ckpt, plan, scale, metadata)
	}
	index := shardIndex{Metadata: map[string]int64{"total_size": 0}, WeightMap: map[string]string{}}
	var files []string
	for i, group := range groups {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(groups))
		if err := writeShard(ctx, filepath.Join(dir, name), ckpt, group, scale, metadata); err != nil {
			return nil, err
		}
		for _, p := range group {
			index.WeightMap[p.name] = name
			index.Metadata["total_size"] += p.outBytes
		}
		files = append(files, name)
	}
	raw, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, safetensors.IndexFileName), append(raw, '\n')); err != nil {
		return nil, err
	}
	return append(files, safetensors.IndexFileName), nil
}

func writeShard(ctx context.Context, path string, ckpt safetensors.Reader, group []plannedTensor, scale float64, metadata map[string]string) error {
	tensors := make(map[string]safetensors.Tensor, len(group))
	for _, p := range group {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := outputBytes(ckpt, p, scale)
		if err != nil {
			return err
		}
		tensors[p.name] = safetensors.Tensor{Dtype: p.dtype, Shape: p.info.Shape, Data: data}
	}
	return safetensors.WriteFile(path, tensors, metadata)
}

// outputBytes produces one output tensor: the stored bytes when neither a
// merge nor a conversion changes them, else the values encoded in p.dtype.
func outputBytes(ckpt safetensors.Reader, p plannedTensor, scale float64) ([]byte, error) {
	if p.delta == nil && p.dtype == p.info.Dtype {
		return ckpt.ReadRaw(p.name)
	}
	values, err := ckpt.ReadFloat32(p.name)
	if err != nil {
		return nil, err
	}
	if p.delta != nil {
		addDelta(values, p.delta, p.info.Shape[0], p.info.Shape[1], scale)
	}
	return encodeFloats(p.dtype, p.info.Shape, values)
}

// encodeFloats stores values as dtype; bf16 goes through the GPU package's
// codec, the one the trainer uploads frozen weights with.
func encodeFloats(dtype safetensors.Dtype, shape []int, values []float32) ([]byte, error) {
	switch dtype {
	case safetensors.BF16:
		return gpu.PackBF16(values)[:2*len(values)], nil // PackBF16 pads to whole u32 words
	case safetensors.F32:
		data := make([]byte, 4*len(values))
		for i, v := range values {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		}
		return data, nil
	}
	t, err := safetensors.NewFloatTensor(dtype, shape, values)
	return t.Data, err
}

// addDelta adds scale * B A to w [out, in] in place. Each row's product is
// accumulated in float64 and added to W once, so the result is W + scale B A
// rounded once to float32; rows are spread over the CPUs.
func addDelta(w []float32, d *loraDelta, out, in int, scale float64) {
	workers := min(runtime.GOMAXPROCS(0), out)
	var wg sync.WaitGroup
	for worker := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc := make([]float64, in)
			for o := worker; o < out; o += workers {
				clear(acc)
				for r := range d.rank {
					br := float64(d.b[o*d.rank+r])
					for i, av := range d.a[r*in : (r+1)*in] {
						acc[i] += br * float64(av)
					}
				}
				row := w[o*in : (o+1)*in]
				for i := range row {
					row[i] = float32(float64(row[i]) + scale*acc[i])
				}
			}
		}()
	}
	wg.Wait()
}

// torchDtypeNames are the config.json spellings of the output dtypes.
var torchDtypeNames = map[safetensors.Dtype]string{
	safetensors.F32: "float32", safetensors.BF16: "bfloat16", safetensors.F16: "float16",
}

// copyCompanions copies config.json (with its dtype set to the output dtype
// when converting) and whichever companion files the model directory holds.
func copyCompanions(modelDir, outDir string, dtype safetensors.Dtype, dropQuantization bool) ([]string, error) {
	configPath := filepath.Join(modelDir, model.ConfigFileName)
	config, err := os.ReadFile(configPath)
	if err != nil {
		return nil, fmt.Errorf("lora: merge: %w", err)
	}
	if dtype != "" {
		var drop []string
		if dropQuantization {
			drop = []string{"quantization", "quantization_config"}
		}
		if config, err = setConfigDtype(config, configPath, torchDtypeNames[dtype], drop...); err != nil {
			return nil, err
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(outDir, model.ConfigFileName), config); err != nil {
		return nil, err
	}
	copied, err := model.CopyCompanions(modelDir, outDir)
	if err != nil {
		return nil, fmt.Errorf("lora: merge: %w", err)
	}
	return append([]string{model.ConfigFileName}, copied...), nil
}

// setConfigDtype drops the fields named in drop (a quantized base's
// quantization config) and sets config.json's "dtype" (transformers 5) and
// "torch_dtype" (transformers 4) to name, adding torch_dtype when neither is
// present, which both versions read. The file is returned unchanged when it
// already says name; otherwise the other fields keep their order and text.
func setConfigDtype(config []byte, path, name string, drop ...string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(config))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%s: not a JSON object", path)
	}
	type field struct {
		key   string
		value json.RawMessage
	}
	var fields []field
	quoted, _ := json.Marshal(name)
	found, changed := false, false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: malformed JSON: %w", path, err)
		}
		key, _ := tok.(string)
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, fmt.Errorf("%s: field %q: malformed JSON: %w", path, key, err)
		}
		if slices.Contains(drop, key) {
			changed = true
			continue
		}
		if key == "dtype" || key == "torch_dtype" {
			found = true
			var old string
			if json.Unmarshal(value, &old) != nil || old != name {
				value, changed = quoted, true
			}
		}
		fields = append(fields, field{key, value})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s: malformed JSON: %w", path, err)
	}
	if found && !changed {
		return config, nil
	}
	if !found {
		fields = append(fields, field{"torch_dtype", quoted})
	}
	var compact bytes.Buffer
	compact.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			compact.WriteByte(',')
		}
		key, _ := json.Marshal(f.key)
		compact.Write(key)
		compact.WriteByte(':')
		if err := json.Compact(&compact, f.value); err != nil {
			return nil, fmt.Errorf("%s: field %q: %w", path, f.key, err)
		}
	}
	compact.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// ErrOutDirNotEmpty is returned by Merge when the output directory holds
// files and MergeOptions.Force is not set.
var ErrOutDirNotEmpty = errors.New("not empty (MergeOptions.Force replaces it)")

// checkOutDir accepts a missing or empty output directory, and a non-empty
// one only with force.
func checkOutDir(dir string, force bool) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lora: merge: output directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("lora: merge: output %s exists and is not a directory", dir)
	}
	if force {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("lora: merge: output directory: %w", err)
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); err == io.EOF {
		return nil
	} else if err != nil {
		return fmt.Errorf("lora: merge: output directory %s: %w", dir, err)
	}
	return fmt.Errorf("lora: merge: output directory %s: %w", dir, ErrOutDirNotEmpty)
}

// publishDir renames the finished temporary directory to out. An existing out
// (empty, or any with force) is first moved aside and removed only after the
// rename succeeded, so a failure leaves the previous contents in place.
func publishDir(tmp, out string, force bool) error {
	if err := checkOutDir(out, force); err != nil { // it may have changed during the merge
		return err
	}
	var aside string
	if _, err := os.Stat(out); err == nil {
		aside = tmp + ".old"
		if err := os.Rename(out, aside); err != nil {
			return fmt.Errorf("lora: merge: moving the old %s aside: %w", out, err)
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		if aside != "" {
			os.Rename(aside, out)
		}
		return fmt.Errorf("lora: merge: %w", err)
	}
	if aside != "" {
		if err := os.RemoveAll(aside); err != nil {
			return fmt.Errorf("lora: merge: the merge is in %s, but removing the old contents (%s) failed: %w", out, aside, err)
		}
	}
	atomicfile.SyncDir(filepath.Dir(filepath.Clean(out)))
	return nil
}

// sameDir reports whether a and b name the same existing directory.
// containsDir reports whether inner lies below outer (both existing
// directories), following symbolic links.
func containsDir(outer, inner string) bool {
	outerSt, err := os.Stat(outer)
	if err != nil {
		return false
	}
	dir, err := filepath.Abs(inner)
	if err != nil {
		return false
	}
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	for {
		parent := filepath.Dir(dir)
		if parent == dir {
			return false
		}
		dir = parent
		if st, err := os.Stat(dir); err == nil && os.SameFile(st, outerSt) {
			return true
		}
	}
}

func sameDir(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}
