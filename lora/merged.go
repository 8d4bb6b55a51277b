// This file exposes Merge's reading side for exporters that write another
// format (llamacpp's GGUF): the base checkpoint with an adapter folded in,
// read tensor by tensor with the same arithmetic Merge writes.

package lora

import (
	"fmt"
	"path/filepath"

	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// Merged is a verified base checkpoint and, optionally, a PEFT adapter
// checked against it. Close it when done.
type Merged struct {
	Config *model.Config
	// Adapter is nil without an adapter.
	Adapter *AdapterConfig
	// Warnings are model.VerifyCheckpoint's remarks on the base.
	Warnings []string
	// BaseQuantized is the base's MLX quantization (nil for a float base):
	// Base then reads its quantized weights dequantized, as the GPU reads
	// them (model.DequantizedReader).
	BaseQuantized *model.QuantizationConfig
	Base          safetensors.Reader
	deltas        map[string]*loraDelta
}

// OpenMerged opens the HF checkpoint in modelDir and, when adapterDir is not
// empty, the PEFT adapter there, with the checks Merge makes. An
// MLX-quantized base reads dequantized.
func OpenMerged(modelDir, adapterDir string) (*Merged, error) {
	cfg, err := model.LoadConfig(filepath.Join(modelDir, model.ConfigFileName))
	if err != nil {
		return nil, err
	}
	ckpt, err := safetensors.OpenDir(modelDir)
	if err != nil {
		return nil, err
	}
	m := &Merged{Config: cfg, Base: ckpt}
	if m.Warnings, err = model.VerifyCheckpoint(cfg, ckpt); err != nil {
		ckpt.Close()
		return nil, err
	}
	if cfg.Quantization != nil {
		m.BaseQuantized = cfg.Quantization
		m.Base = model.DequantizedReader(cfg, ckpt)
		ckpt = m.Base
	}
	if adapterDir != "" {
		if m.Adapter, m.deltas, err = readAdapter(adapterDir, cfg, ckpt); err != nil {
			ckpt.Close()
			return nil, err
		}
	}
	return m, nil
}

// Close closes the base checkpoint.
func (m *Merged) Close() error { return m.Base.Close() }

// Scale is the factor of B A (alpha/r, or alpha/sqrt(r) with rsLoRA); 0
// without an adapter.
func (m *Merged) Scale() float64 {
	if m.Adapter == nil {
		return 0
	}
	return m.Adapter.scale()
}

// ReadFloat32 returns the base tensor name widened to float32, with
// scale * B A added (in float64, rounded once) when the adapter adapts it.
func (m *Merged) ReadFloat32(name string) ([]float32, error) {
	values, err := m.Base.ReadFloat32(name)
	if err != nil {
		return nil, err
	}
	if d := m.deltas[name]; d != nil {
		info, err := m.Base.Info(name)
		if err != nil {
			return nil, err
		}
		addDelta(values, d, info.Shape[0], info.Shape[1], m.Scale())
	}
	return values, nil
}

// Factors returns the adapter's A [rank, in] and B [out, rank] for the base
// weight name, or false when the adapter does not adapt it.
func (m *Merged) Factors(name string) (a, b []float32, rank int, ok bool) {
	d := m.deltas[name]
	if d == nil {
		return nil, nil, 0, false
	}
	return d.a, d.b, d.rank, true
}

// Adapted lists the base weights the adapter adapts.
func (m *Merged) Adapted() []string {
	names := make([]string, 0, len(m.deltas))
	for name := range m.deltas {
		names = append(names, name)
	}
	return names
}

// String describes the merge for logs.
func (m *Merged) String() string {
	if m.Adapter == nil {
		return m.Base.Path()
	}
	return fmt.Sprintf("%s + LoRA r=%d alpha=%g", m.Base.Path(), m.Adapter.Rank, m.Adapter.Alpha)
}
