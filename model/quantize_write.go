package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model/safetensors"
)

// QuantizedTensor reports one weight QuantizeCheckpoint quantized: its name
// and shape, and the error of the dequantized weight against the original;
// Kept says it stayed float (the group does not divide its input size).
type QuantizedTensor struct {
	Name          string
	Shape         []int
	Kept          bool
	MaxAbsError   float64
	RMSError      float64
	RelativeError float64 // ||W - dequant(W)|| / ||W||
}

// QuantizeCheckpoint writes an MLX-format quantized copy of the float
// checkpoint in dir to out, which must not exist: every quantizable module
// (QuantizableModules) as U32 codes with scales and biases in the weight's
// dtype (QuantizeAffine), every other tensor as it is, config.json with
// "quantization" and "quantization_config" added, and the companion files
// (tokenizer, generation config) copied. The directory appears whole or
// not at all: it is written under a temporary name beside out and renamed.
func QuantizeCheckpoint(dir, out string, s Quantization) ([]QuantizedTensor, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	cfg, err := LoadConfig(filepath.Join(dir, ConfigFileName))
	if err != nil {
		return nil, err
	}
	if cfg.Quantization != nil {
		return nil, fmt.Errorf("model: quantize: config %s: the checkpoint is already quantized (%s)", cfg.Path, cfg.Quantization.Default)
	}
	if _, err := os.Stat(out); err == nil {
		return nil, fmt.Errorf("model: quantize: %s already exists", out)
	}
	ckpt, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer ckpt.Close()
	if _, err := VerifyCheckpoint(cfg, ckpt); err != nil {
		return nil, err
	}

	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(out)), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("model: quantize: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()

	// Modules whose input size the group does not divide stay float, as
	// mlx-lm leaves them (and finds them by their missing scales).
	quantized := map[string]bool{}
	for _, m := range QuantizableModules(cfg) {
		quantized[m+".weight"] = moduleShape(cfg, m)[1]%s.GroupSize == 0
	}
	tensors := map[string]safetensors.Tensor{}
	var report []QuantizedTensor
	for _, name := range ckpt.Names() {
		info, err := ckpt.Info(name)
		if err != nil {
			return nil, err
		}
		if !quantized[name] {
			if _, module := quantized[name]; module {
				report = append(report, QuantizedTensor{Name: name, Shape: info.Shape, Kept: true})
			}
			data, err := ckpt.ReadRaw(name)
			if err != nil {
				return nil, err
			}
			tensors[name] = safetensors.Tensor{Dtype: info.Dtype, Shape: info.Shape, Data: data}
			continue
		}
		_, values, err := readFinite(ckpt, name)
		if err != nil {
			return nil, err
		}
		w, err := QuantizeAffine(values, info.Shape[0], info.Shape[1], s, scaleType(info.Dtype))
		if err != nil {
			return nil, fmt.Errorf("model: quantize: %s: tensor %q %v: %w", info.Path, name, info.Shape, err)
		}
		module := strings.TrimSuffix(name, ".weight")
		codes := make([]byte, 4*len(w.Codes))
		for i, c := range w.Codes {
			binary.LittleEndian.PutUint32(codes[4*i:], c)
		}
		wShape, sShape := quantizedShapes(info.Shape, s)
		tensors[name] = safetensors.Tensor{Dtype: safetensors.U32, Shape: wShape, Data: codes}
		for _, part := range []struct {
			suffix string
			values []float32
		}{{".scales", w.Scales}, {".biases", w.Biases}} {
			t, err := safetensors.NewFloatTensor(info.Dtype, sShape, part.values)
			if err != nil {
				return nil, err
			}
			tensors[module+part.suffix] = t
		}
		report = append(report, quantizationError(name, info.Shape, values, w.Dequantize()))
	}
	if err := safetensors.WriteFile(filepath.Join(tmp, safetensors.SingleFileName), tensors, map[string]string{"format": "mlx"}); err != nil {
		return nil, err
	}
	if err := writeQuantizedConfig(cfg.Path, filepath.Join(tmp, ConfigFileName), s); err != nil {
		return nil, err
	}
	if _, err := CopyCompanions(dir, tmp); err != nil {
		return nil, fmt.Errorf("model: quantize: %w", err)
	}
	atomicfile.SyncDir(tmp)
	if err := os.Rename(tmp, out); err != nil {
		return nil, fmt.Errorf("model: quantize: %w", err)
	}
	atomicfile.SyncDir(filepath.Dir(filepath.Clean(out)))
	ok = true
	return report, nil
}

// quantizationError compares a weight with its dequantized form.
func quantizationError(name string, shape []int, orig, deq []float32) QuantizedTensor {
	r := QuantizedTensor{Name: name, Shape: shape}
	var sq, norm float64
	for i, v := range orig {
		d := float64(deq[i]) - float64(v)
		r.MaxAbsError = max(r.MaxAbsError, math.Abs(d))
		sq += d * d
		norm += float64(v) * float64(v)
	}
	r.RMSError = math.Sqrt(sq / float64(len(orig)))
	if norm > 0 {
		r.RelativeError = math.Sqrt(sq / norm)
	}
	return r
}

// writeQuantizedConfig copies the config with mlx-lm's "quantization" and
// its copy "quantization_config" set, other fields as they are.
func writeQuantizedConfig(src, dst string, s Quantization) error {
	raw, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("model: quantize: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return fmt.Errorf("model: quantize: %s: %w", src, err)
	}
	q, err := json.Marshal(map[string]any{"group_size": s.GroupSize, "bits": s.Bits, "mode": "affine"})
	if err != nil {
		return err
	}
	fields["quantization"], fields["quantization_config"] = q, q
	out, err := json.MarshalIndent(fields, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(dst, append(out, '\n'))
}
