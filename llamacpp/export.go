package llamacpp

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/internal/atomicfile"
	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// ExportOptions says what Export writes.
type ExportOptions struct {
	ModelDir string // HF checkpoint directory (config.json, safetensors, tokenizer files)
	// AdapterDir is a PEFT adapter directory to merge in (or, with
	// AdapterOnly, to write alone); empty exports the base.
	AdapterDir  string
	AdapterOnly bool
	// Type is the type of the 2-D weights: F32, F16, BF16, Q8_0 or Q4_0
	// (norms and biases stay F32). Zero with TypeSet false: the base's own
	// float type (F32 for an adapter).
	Type    gguf.TensorType
	TypeSet bool
	Out     string
}

// ExportReport describes a written file.
type ExportReport struct {
	Arch    string
	Type    gguf.TensorType
	Tensors int
	Bytes   int64
	// Merged lists the base weights the adapter was folded into (or, with
	// AdapterOnly, the weights it adapts).
	Merged []string
	// BaseQuantization describes an MLX-quantized base (empty for a float
	// one), whose weights were merged and written from their dequantized
	// values; the GGUF's metadata says the same (KeyBaseQuantization).
	BaseQuantization string
	// Fallbacks lists weights written as F16 because their rows are not a
	// whole number of 32-element blocks (as convert_hf_to_gguf.py does).
	Fallbacks []string
	Warnings  []string
}

// KeyBaseQuantization is the metadata key that records, in a GGUF exported
// from (or with an adapter trained on) an MLX-quantized base, which
// quantization the base had and that the weights are its dequantized values.
const KeyBaseQuantization = "sparselora.base_quantization"

// describeQuantization says what a quantized base was, e.g. "MLX affine
// 4-bit, groups of 32 (model.layers.0.mlp.down_proj float); weights
// written from the dequantized base (adapter merged into them)"; empty for nil.
func describeQuantization(q *model.QuantizationConfig) string {
	if q == nil {
		return ""
	}
	var other []string
	for _, m := range slices.Sorted(maps.Keys(q.Overrides)) {
		switch o := q.Overrides[m]; {
		case o == nil:
			other = append(other, m+" float")
		case *o != q.Default:
			other = append(other, fmt.Sprintf("%s %s", m, o))
		}
	}
	desc := "MLX affine " + q.Default.String()
	if len(other) > 0 {
		const most = 4
		if len(other) > most {
			other = append(other[:most], fmt.Sprintf("%d more", len(other)-most))
		}
		desc += " (" + strings.Join(other, ", ") + ")"
	}
	return desc + "; weights written from the dequantized base (adapter merged into them)"
}

// fileTypes is llama.cpp's general.file_type (enum llama_ftype) per type.
var fileTypes = map[gguf.TensorType]uint32{gguf.F32: 0, gguf.F16: 1, gguf.Q4_0: 2, gguf.Q8_0: 7, gguf.BF16: 32}

// Export writes opts.Out atomically: the merged model with its metadata
// and tokenizer, or with AdapterOnly the adapter as llama.cpp's LoRA adapter
// GGUF (general.type "adapter", adapter.lora.alpha; lora_a ne [in, r],
// lora_b ne [r, out], lora_b's q/k rows permuted like the weights).
func Export(ctx context.Context, opts ExportOptions) (ExportReport, error) {
	if opts.AdapterOnly && opts.AdapterDir == "" {
		return ExportReport{}, fmt.Errorf("llamacpp: an adapter-only export needs the adapter directory")
	}
	src, err := lora.OpenMerged(opts.ModelDir, opts.AdapterDir)
	if err != nil {
		return ExportReport{}, err
	}
	defer src.Close()
	cfg := src.Config
	arch, err := ggufArch(cfg)
	if err != nil {
		return ExportReport{}, err
	}
	rep := ExportReport{Arch: arch, Warnings: src.Warnings, BaseQuantization: describeQuantization(src.BaseQuantized)}
	if !opts.TypeSet {
		opts.Type = gguf.F32
		if info, err := src.Base.Info("model.embed_tokens.weight"); err == nil && !opts.AdapterOnly {
			switch info.Dtype {
			case safetensors.BF16:
				opts.Type = gguf.BF16
			case safetensors.F16:
				opts.Type = gguf.F16
			}
		}
	}
	if _, ok := fileTypes[opts.Type]; !ok {
		return ExportReport{}, fmt.Errorf("llamacpp: export type %s: want F32, F16, BF16, Q8_0 or Q4_0", opts.Type)
	}
	if opts.AdapterOnly && opts.Type != gguf.F32 && opts.Type != gguf.F16 && opts.Type != gguf.BF16 {
		return ExportReport{}, fmt.Errorf("llamacpp: an adapter is written as F32, F16 or BF16, not %s", opts.Type)
	}
	rep.Type = opts.Type
	if cfg.SlidingWindow > 0 && cfg.SlidingWindow < cfg.MaxPositionEmbeddings {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: sliding_window %d: llama.cpp's llama architecture attends to the whole context", cfg.Path, cfg.SlidingWindow))
	}
	var meta []gguf.KV
	var tensors []gguf.Tensor
	if opts.AdapterOnly {
		meta, tensors, err = adapterFile(arch, src, opts.Type, &rep)
	} else {
		meta, tensors, err = modelFile(arch, src, opts, &rep)
	}
	if err != nil {
		return ExportReport{}, err
	}
	if rep.BaseQuantization != "" {
		meta = append(meta, gguf.KV{Key: KeyBaseQuantization, Value: rep.BaseQuantization})
	}
	rep.Tensors = len(tensors)
	err = atomicfile.Write(opts.Out, func(w io.Writer) error {
		cw := &countingWriter{w: w}
		wrapped := make([]gguf.Tensor, len(tensors))
		for i, t := range tensors {
			wrapped[i] = t
			data := t.Data
			wrapped[i].Data = func() ([]byte, error) {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				return data()
			}
		}
		err := gguf.Write(cw, meta, wrapped)
		rep.Bytes = cw.n
		return err
	})
	if err != nil {
		return ExportReport{}, err
	}
	return rep, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// orderedTensors lists the HF tensors of cfg in llama.cpp's order: the
// embedding, each layer's tensors, the final norm, the LM head.
func orderedTensors(cfg *model.Config) []string {
	want := model.ExpectedTensors(cfg)
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(orderKey(a), orderKey(b)) })
	return names
}

var stemOrder = []string{"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}

func orderKey(hf string) string {
	g, _ := ggufName(hf)
	switch g {
	case "token_embd.weight":
		return "0"
	case "output_norm.weight":
		return "2"
	case "output.weight":
		return "3"
	}
	parts := strings.SplitN(g, ".", 4) // blk, N, stem, weight|bias
	layer, _ := strconv.Atoi(parts[1])
	return fmt.Sprintf("1%08d%02d%s", layer, slices.Index(stemOrder, parts[2]), parts[3][:1])
}

func modelFile(arch string, src *lora.Merged, opts ExportOptions, rep *ExportReport) ([]gguf.KV, []gguf.Tensor, error) {
	cfg := src.Config
	archMeta, err := configMetadata(arch, cfg)
	if err != nil {
		return nil, nil, err
	}
	tokMeta, err := tokenizerMetadata(opts.ModelDir, cfg)
	if err != nil {
		return nil, nil, err
	}
	meta := []gguf.KV{
		{Key: "general.architecture", Value: arch},
		{Key: "general.type", Value: "model"},
		{Key: gguf.KeyAlignment, Value: uint32(gguf.DefaultAlignment)},
		{Key: "general.file_type", Value: fileTypes[opts.Type]},
	}
	meta = append(meta, archMeta...)
	meta = append(meta, tokMeta...)
	want := model.ExpectedTensors(cfg)
	var tensors []gguf.Tensor
	for _, hf := range orderedTensors(cfg) {
		name, _ := ggufName(hf)
		shape := want[hf]
		typ := gguf.F32
		if len(shape) == 2 {
			typ = opts.Type
			if typ.BlockSize() > 1 && shape[1]%typ.BlockSize() != 0 {
				typ = gguf.F16
				rep.Fallbacks = append(rep.Fallbacks, name)
			}
		}
		dims := make([]int64, len(shape))
		for i, d := range shape {
			dims[len(shape)-1-i] = int64(d)
		}
		heads := rotaryHeads(arch, hf, cfg)
		tensors = append(tensors, gguf.Tensor{Name: name, Dims: dims, Type: typ, Data: func() ([]byte, error) {
			values, err := src.ReadFloat32(hf)
			if err != nil {
				return nil, err
			}
			if heads > 0 {
				cols := 1
				if len(shape) == 2 {
					cols = shape[1]
				}
				if values, err = permuteRows(values, heads, cols, false); err != nil {
					return nil, fmt.Errorf("%s: %w", hf, err)
				}
			}
			return gguf.Encode(typ, values)
		}})
	}
	if cfg.Rope.Type == model.RopeLlama3 {
		tensors = append([]gguf.Tensor{ropeFreqsTensor(cfg)}, tensors...)
	}
	rep.Merged = src.Adapted()
	slices.Sort(rep.Merged)
	return meta, tensors, nil
}

func adapterFile(arch string, src *lora.Merged, typ gguf.TensorType, rep *ExportReport) ([]gguf.KV, []gguf.Tensor, error) {
	cfg := src.Config
	// llama.cpp scales B A by alpha/r with r = lora_b's ne[0]; alpha = scale*r
	// keeps rsLoRA's alpha/sqrt(r) too.
	alpha := float32(src.Scale() * float64(src.Adapter.Rank))
	meta := []gguf.KV{
		{Key: "general.architecture", Value: arch},
		{Key: "general.type", Value: "adapter"},
		{Key: gguf.KeyAlignment, Value: uint32(gguf.DefaultAlignment)},
		{Key: "adapter.type", Value: "lora"},
		{Key: "adapter.lora.alpha", Value: alpha},
	}
	adapted := src.Adapted()
	slices.SortFunc(adapted, func(a, b string) int { return strings.Compare(orderKey(a), orderKey(b)) })
	want := model.ExpectedTensors(cfg)
	var tensors []gguf.Tensor
	for _, hf := range adapted {
		name, ok := ggufName(hf)
		if !ok {
			return nil, nil, fmt.Errorf("llamacpp: adapted weight %s has no llama.cpp tensor", hf)
		}
		a, b, rank, _ := src.Factors(hf)
		out, in := want[hf][0], want[hf][1]
		heads := rotaryHeads(arch, hf, cfg)
		tensors = append(tensors,
			gguf.Tensor{Name: name + ".lora_a", Dims: []int64{int64(in), int64(rank)}, Type: typ,
				Data: func() ([]byte, error) { return gguf.Encode(typ, a) }},
			gguf.Tensor{Name: name + ".lora_b", Dims: []int64{int64(rank), int64(out)}, Type: typ,
				Data: func() ([]byte, error) {
					values := b
					if heads > 0 {
						var err error
						if values, err = permuteRows(b, heads, rank, false); err != nil {
							return nil, fmt.Errorf("%s lora_B: %w", hf, err)
						}
					}
					return gguf.Encode(typ, values)
				}})
	}
	rep.Merged = adapted
	return meta, tensors, nil
}
