package lora

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/optim"
)

// PEFT file names inside an adapter directory.
const (
	ConfigFileName  = "adapter_config.json"
	WeightsFileName = "adapter_model.safetensors"
)

// Config is the part of PEFT's LoraConfig that sparselora reads and writes.
type Config struct {
	Rank    int
	Alpha   float64
	Targets []model.Projection
	// RSLoRA scales by alpha/sqrt(r) instead of alpha/r (PEFT's use_rslora).
	RSLoRA bool
	// BaseModel is recorded as base_model_name_or_path.
	BaseModel string
}

// scale is the factor PEFT multiplies the adapter's output by.
func (c Config) scale() float64 {
	if c.RSLoRA {
		return c.Alpha / math.Sqrt(float64(c.Rank))
	}
	return c.Alpha / float64(c.Rank)
}

// Key names one adapted projection.
type Key struct {
	Layer int
	Proj  model.Projection
}

// PEFTName is the module path PEFT uses in adapter files, without the
// ".lora_A.weight" suffix.
func (k Key) PEFTName() string {
	return fmt.Sprintf("base_model.model.model.layers.%d.%s.%s", k.Layer, k.Proj.Module(), k.Proj)
}

// Set is the LoRA adapters of a whole model.
type Set struct {
	Config   Config
	Adapters map[Key]*LoRA
	// Layers is PEFT's layers_to_transform when the adapter covers only
	// some layers (nil: every layer), written back by Save.
	Layers []int
}

// Keys lists the adapted projections in layer, then projection order.
func (s *Set) Keys() []Key {
	keys := make([]Key, 0, len(s.Adapters))
	for k := range s.Adapters {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		if a.Layer != b.Layer {
			return a.Layer - b.Layer
		}
		return int(a.Proj) - int(b.Proj)
	})
	return keys
}

// NewSet creates adapters on cfg.Targets of every layer of m, initialised as
// PEFT does (Kaiming-uniform A, zero B) from seed.
func NewSet(m *model.Model, cfg Config, seed uint64) (*Set, error) {
	if cfg.Rank <= 0 || cfg.Alpha == 0 || len(cfg.Targets) == 0 {
		return nil, fmt.Errorf("lora: rank %d, alpha %g and %d target modules: want a positive rank, non-zero alpha and at least one target", cfg.Rank, cfg.Alpha, len(cfg.Targets))
	}
	s := &Set{Config: cfg, Adapters: map[Key]*LoRA{}}
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	for i, layer := range m.Layers {
		for _, p := range cfg.Targets {
			l, err := s.add(m.Dev, Key{i, p}, layer.Proj[p])
			if err != nil {
				s.Release()
				return nil, err
			}
			if err := l.InitPEFT(rng); err != nil {
				s.Release()
				return nil, err
			}
		}
	}
	return s, nil
}

func (s *Set) add(dev *gpu.Device, k Key, proj *model.Linear) (*LoRA, error) {
	// New takes PEFT's alpha and divides by the rank; RSLoRA's scale is folded in.
	alpha := s.Config.scale() * float64(s.Config.Rank)
	l, err := New(dev, proj.In, proj.Out, s.Config.Rank, float32(alpha))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k.PEFTName(), err)
	}
	s.Adapters[k] = l
	return l, nil
}

// Attach installs the adapters on the model's layers (replacing any).
func (s *Set) Attach(m *model.Model) {
	for _, l := range m.Layers {
		l.Adapters = [7]model.Adapter{}
	}
	for k, a := range s.Adapters {
		m.Layers[k.Layer].Adapters[k.Proj] = a
	}
}

// Params lists every trainable tensor with its PEFT name
// (…q_proj.lora_A.weight), in a stable order.
func (s *Set) Params() []optim.Param {
	var out []optim.Param
	for _, k := range s.Keys() {
		for _, p := range s.Adapters[k].Params() {
			out = append(out, optim.Param{Name: k.PEFTName() + "." + p.Name + ".weight", Value: p.Value, Grad: p.Grad})
		}
	}
	return out
}

// ZeroGrad records zeroing every adapter's gradients.
func (s *Set) ZeroGrad(rec *gpu.Recorder) error {
	for _, k := range s.Keys() {
		if err := s.Adapters[k].ZeroGrad(rec); err != nil {
			return err
		}
	}
	return nil
}

// Release frees every adapter.
func (s *Set) Release() {
	for _, a := range s.Adapters {
		a.Release()
	}
	s.Adapters = nil
}

// peftConfig is adapter_config.json as PEFT writes it; fields sparselora does
// not model are written with PEFT's defaults and checked on load.
type peftConfig struct {
	PeftType          string          `json:"peft_type"`
	TaskType          string          `json:"task_type"`
	BaseModel         *string         `json:"base_model_name_or_path"`
	R                 int             `json:"r"`
	LoraAlpha         float64         `json:"lora_alpha"`
	LoraDropout       float64         `json:"lora_dropout"`
	TargetModules     json.RawMessage `json:"target_modules"`
	Bias              string          `json:"bias"`
	FanInFanOut       bool            `json:"fan_in_fan_out"`
	UseRSLoRA         bool            `json:"use_rslora"`
	UseDoRA           bool            `json:"use_dora"`
	InitLoraWeights   bool            `json:"init_lora_weights"`
	InferenceMode     bool            `json:"inference_mode"`
	RankPattern       map[string]any  `json:"rank_pattern"`
	AlphaPattern      map[string]any  `json:"alpha_pattern"`
	ModulesToSave     []string        `json:"modules_to_save"`
	LayersToTransform any             `json:"layers_to_transform"`
	PeftVersion       string          `json:"peft_version,omitempty"`
}

// Save writes the adapters in PEFT's format (adapter_config.json and
// adapter_model.safetensors, f32), atomically per file.
func (s *Set) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	targets := make([]string, len(s.Config.Targets))
	for i, p := range s.Config.Targets {
		targets[i] = p.String()
	}
	rawTargets, _ := json.Marshal(targets)
	var base *string
	if s.Config.BaseModel != "" {
		base = &s.Config.BaseModel
	}
	cfg := peftConfig{PeftType: "LORA", TaskType: "CAUSAL_LM", BaseModel: base, R: s.Config.Rank,
		LoraAlpha: s.Config.Alpha, TargetModules: rawTargets, Bias: "none", UseRSLoRA: s.Config.RSLoRA,
		InitLoraWeights: true, InferenceMode: true, RankPattern: map[string]any{}, AlphaPattern: map[string]any{}}
	if len(s.Layers) > 0 {
		cfg.LayersToTransform = s.Layers
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	tensors := map[string]safetensors.Tensor{}
	for _, k := range s.Keys() {
		l := s.Adapters[k]
		a, b, err := l.Weights()
		if err != nil {
			return fmt.Errorf("reading %s: %w", k.PEFTName(), err)
		}
		ta, err := safetensors.NewFloatTensor(safetensors.F32, []int{l.Rank(), l.In()}, a)
		if err != nil {
			return err
		}
		tb, err := safetensors.NewFloatTensor(safetensors.F32, []int{l.Out(), l.Rank()}, b)
		if err != nil {
			return err
		}
		tensors[k.PEFTName()+".lora_A.weight"] = ta
		tensors[k.PEFTName()+".lora_B.weight"] = tb
	}
	if err := safetensors.WriteFile(filepath.Join(dir, WeightsFileName), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, ConfigFileName), append(raw, '\n'))
}

// Load reads a PEFT LoRA adapter directory for model m. adapter_config.json
// decides which projections of which layers are adapted (target_modules,
// layers_to_transform; see ParseAdapterConfig) and the weight file must hold
// exactly those adapters, each with both lora_A and lora_B of the configured
// rank and finite values; unsupported PEFT options are rejected by name.
func Load(m *model.Model, dir string) (*Set, error) {
	cfgPath := filepath.Join(dir, ConfigFileName)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	ac, err := ParseAdapterConfig(raw, cfgPath)
	if err != nil {
		return nil, err
	}
	weightsPath := filepath.Join(dir, WeightsFileName)
	f, err := safetensors.Open(weightsPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pairs, err := ac.matchWeights(f.Names(), len(m.Layers), weightsPath)
	if err != nil {
		return nil, err
	}

	s := &Set{Config: ac.Config, Adapters: map[Key]*LoRA{}, Layers: ac.Layers}
	ok := false
	defer func() {
		if !ok {
			s.Release()
		}
	}()
	keys := slices.SortedFunc(maps.Keys(pairs), func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Layer, b.Layer), cmp.Compare(a.Proj, b.Proj))
	})
	for _, k := range keys {
		proj := m.Layers[k.Layer].Proj[k.Proj]
		a, err := readShaped(f, pairs[k].A, []int{ac.Rank, proj.In})
		if err != nil {
			return nil, err
		}
		b, err := readShaped(f, pairs[k].B, []int{proj.Out, ac.Rank})
		if err != nil {
			return nil, err
		}
		l, err := s.add(m.Dev, k, proj)
		if err != nil {
			return nil, err
		}
		if err := l.SetWeights(a, b); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", weightsPath, k.PEFTName(), err)
		}
	}
	ok = true
	return s, nil
}

// shapeError is readShaped's error for a tensor of another shape than the
// model's projection wants (as opposed to bad values or an unreadable file).
type shapeError struct{ err error }

func (e *shapeError) Error() string { return e.err.Error() }
func (e *shapeError) Unwrap() error { return e.err }

// readShaped reads an adapter tensor, checking its shape and that every value
// is finite (a NaN in an adapter turns every output it touches into NaN).
func readShaped(f *safetensors.File, name string, shape []int) ([]float32, error) {
	info, err := f.Info(name)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(info.Shape, shape) {
		return nil, &shapeError{fmt.Errorf("%s: tensor %s has shape %v, want %v", f.Path(), name, info.Shape, shape)}
	}
	values, err := f.ReadFloat32(name)
	if err != nil {
		return nil, err
	}
	for i, v := range values {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%s: tensor %s: element %d is %v", f.Path(), name, i, v)
		}
	}
	return values, nil
}
