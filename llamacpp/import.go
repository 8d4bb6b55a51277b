package llamacpp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// ImportReport describes a GGUF model turned into an HF checkpoint.
type ImportReport struct {
	Dir  string
	Arch string
	// Types counts the GGUF's tensors by type.
	Types map[gguf.TensorType]int
	// Quantized counts the weights kept quantized (Q8_0, Q4_0 and Q4_1 as
	// 8- and 4-bit group-affine codes in groups of 32, MLX's layout).
	Quantized int
	// WideScales names the quantized weights whose scales and biases are f32
	// rather than f16 (a block's -128·d or -8·d overflows f16).
	WideScales []string
	// Dequantized names block-quantized tensors widened to float32 (1-D
	// ones, which have no quantized form).
	Dequantized []string
	// Cached is true when Materialize found the checkpoint already made.
	Cached bool
}

// TypeSummary lists the tensor types and counts, e.g. "Q8_0 x21, F32 x7".
func (r ImportReport) TypeSummary() string {
	types := make([]gguf.TensorType, 0, len(r.Types))
	for t := range r.Types {
		types = append(types, t)
	}
	slices.Sort(types)
	parts := make([]string, len(types))
	for i, t := range types {
		parts[i] = fmt.Sprintf("%s x%d", t, r.Types[t])
	}
	return strings.Join(parts, ", ")
}

// IsGGUF says whether path names a GGUF file (by its extension, or a
// regular file starting with the GGUF magic).
func IsGGUF(path string) bool {
	if strings.HasSuffix(strings.ToLower(path), ".gguf") {
		return true
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.IsDir() {
		return false
	}
	magic := make([]byte, 4)
	_, err = f.Read(magic)
	return err == nil && string(magic) == gguf.Magic
}

// Materialize makes the HF checkpoint of the GGUF model at path under
// cacheRoot (ToHF, into a folder named by the file's path, size and time
// stamp) and returns it; a later call for the unchanged file reuses it.
func Materialize(path, cacheRoot string) (ImportReport, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ImportReport{}, fmt.Errorf("llamacpp: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return ImportReport{}, fmt.Errorf("llamacpp: %w", err)
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d\x00v2", abs, st.Size(), st.ModTime().UnixNano()))
	dir := filepath.Join(cacheRoot, strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))+"-"+hex.EncodeToString(sum[:8]))
	if raw, err := os.ReadFile(filepath.Join(dir, importRecord)); err == nil {
		var rep ImportReport
		if json.Unmarshal(raw, &rep) == nil {
			rep.Dir, rep.Cached = dir, true
			return rep, nil
		}
	}
	if err := os.MkdirAll(cacheRoot, 0o755); err != nil {
		return ImportReport{}, fmt.Errorf("llamacpp: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheRoot, ".import-*")
	if err != nil {
		return ImportReport{}, fmt.Errorf("llamacpp: %w", err)
	}
	defer os.RemoveAll(tmp)
	rep, err := ToHF(abs, tmp)
	if err != nil {
		return ImportReport{}, err
	}
	os.RemoveAll(dir) // an incomplete earlier attempt
	if err := os.Rename(tmp, dir); err != nil {
		return ImportReport{}, fmt.Errorf("llamacpp: %w", err)
	}
	rep.Dir = dir
	return rep, nil
}

// importRecord is written last into a made checkpoint: its presence marks
// the folder complete.
const importRecord = "gguf_import.json"

// ToHF converts the GGUF model at path into an HF checkpoint in dir (which
// must exist): config.json, generation_config.json, model.safetensors (HF
// names, q/k rows restored), tokenizer.json and tokenizer_config.json.
// Q8_0, Q4_0 and Q4_1 weights stay quantized: they are written in MLX's
// affine format (U32 codes, f16 scales and biases, groups of 32; SPEC §13),
// with config.json's "quantization" naming their bits and the float modules,
// so that model.Load keeps them as codes on the GPU. Other tensors become
// float32. Errors name the key or tensor at fault.
func ToHF(path, dir string) (ImportReport, error) {
	g, err := gguf.Open(path)
	if err != nil {
		return ImportReport{}, err
	}
	defer g.Close()
	if typ, err := g.String("general.type"); err == nil && typ == "adapter" {
		return ImportReport{}, fmt.Errorf("llamacpp: %s is a LoRA adapter GGUF (general.type \"adapter\"), not a model", path)
	}
	cfgRaw, arch, err := configJSON(g)
	if err != nil {
		return ImportReport{}, err
	}
	cfg, err := model.ParseConfig(cfgRaw, path+" (metadata)")
	if err != nil {
		return ImportReport{}, err
	}
	rep := ImportReport{Arch: arch, Types: map[gguf.TensorType]int{}}
	want := model.ExpectedTensors(cfg)
	tensors := map[string]safetensors.Tensor{}
	bits := map[string]int{} // modules kept quantized
	for _, info := range g.Tensors {
		if info.Name == ropeFreqsName { // read into the config (configJSON)
			continue
		}
		hf, ok := hfName(info.Name)
		if !ok {
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q has no place in the %s architecture", path, info.Name, arch)
		}
		shape, ok := want[hf]
		if !ok {
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q does not fit the architecture (%s, block_count %d)", path, info.Name, arch, cfg.NumHiddenLayers)
		}
		dims := make([]int64, len(shape))
		for i, d := range shape {
			dims[len(shape)-1-i] = int64(d)
		}
		if !slices.Equal(dims, info.Dims) {
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q has dims %v; the metadata implies %v", path, info.Name, info.Dims, dims)
		}
		if !info.Type.Decodable() {
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q has type %s; sparselora reads %s (K-quants and other types: convert the model from its F16/BF16 GGUF or its HF checkpoint)",
				path, info.Name, info.Type, gguf.DecodableTypes)
		}
		rep.Types[info.Type]++
		heads := rotaryHeads(arch, hf, cfg)
		if module, ok := strings.CutSuffix(hf, ".weight"); ok && len(shape) == 2 && keepsQuantized(info.Type) {
			raw, err := g.ReadRaw(info.Name)
			if err != nil {
				return ImportReport{}, err
			}
			w, err := affineFromBlocks(info.Type, raw, shape[0], shape[1])
			if err == nil && heads > 0 {
				err = permuteAffineRows(w, heads, true)
			}
			if err != nil {
				return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q: %w", path, info.Name, err)
			}
			if w.Format.Scales == gpu.ScaleF32 {
				rep.WideScales = append(rep.WideScales, info.Name)
			}
			parts, err := affineTensors(module, w)
			if err != nil {
				return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q: %w", path, info.Name, err)
			}
			maps.Copy(tensors, parts)
			bits[module] = w.Format.Bits
			continue
		}
		values, err := g.ReadFloat32(info.Name)
		if err != nil {
			return ImportReport{}, err
		}
		if info.Type.BlockSize() > 1 {
			rep.Dequantized = append(rep.Dequantized, info.Name)
		}
		if heads > 0 {
			cols := 1
			if len(shape) == 2 {
				cols = shape[1]
			}
			if values, err = permuteRows(values, heads, cols, true); err != nil {
				return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q: %w", path, info.Name, err)
			}
		}
		t, err := safetensors.NewFloatTensor(safetensors.F32, shape, values)
		if err != nil {
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q: %w", path, info.Name, err)
		}
		tensors[hf] = t
	}
	for hf := range want {
		if _, ok := tensors[hf]; !ok {
			name, _ := ggufName(hf)
			return ImportReport{}, fmt.Errorf("llamacpp: %s: tensor %q is missing (%s, block_count %d)", path, name, arch, cfg.NumHiddenLayers)
		}
	}
	tokJSON, tokCfg, err := hfTokenizerFiles(g)
	if err != nil {
		return ImportReport{}, err
	}
	gen := map[string]any{}
	if cfg.BOSTokenID != nil {
		gen["bos_token_id"] = *cfg.BOSTokenID
	}
	if len(cfg.EOSTokenIDs) > 0 {
		gen["eos_token_id"] = cfg.EOSTokenIDs[0]
	}
	genJSON, _ := json.MarshalIndent(gen, "", "  ")
	if cfgRaw, err = quantizationJSON(cfgRaw, cfg, bits); err != nil {
		return ImportReport{}, err
	}
	format := "pt"
	if len(bits) > 0 {
		// The loader checks the quantization config against the tensors.
		if _, err := model.ParseConfig(cfgRaw, path+" (metadata)"); err != nil {
			return ImportReport{}, err
		}
		format = "mlx"
	}
	rep.Quantized = len(bits)
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": format}); err != nil {
		return ImportReport{}, err
	}
	for name, data := range map[string][]byte{model.ConfigFileName: cfgRaw, "generation_config.json": genJSON,
		"tokenizer.json": tokJSON, "tokenizer_config.json": tokCfg} {
		if err := atomicfile.WriteFile(filepath.Join(dir, name), data); err != nil {
			return ImportReport{}, err
		}
	}
	record, _ := json.Marshal(rep)
	if err := atomicfile.WriteFile(filepath.Join(dir, importRecord), record); err != nil {
		return ImportReport{}, err
	}
	return rep, nil
}

// CacheRoot is where Materialize keeps converted GGUF models: the user
// cache folder's sparselora/gguf.
func CacheRoot() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("llamacpp: no user cache folder for converted GGUF models: %w", err)
	}
	return filepath.Join(dir, "sparselora", "gguf"), nil
}
