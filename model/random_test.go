package model

import (
	"context"
	"testing"

	"github.com/sparselora/sparselora/gpu"
)

func TestBuiltinShapes(t *testing.T) {
	for name, want := range map[string]int64{"llama2-7b": 6738415616, "llama3-8b": 8030261248} {
		cfg, err := BuiltinShape(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.ParameterCount(); got != want {
			t.Errorf("%s: %d parameters, want %d", name, got, want)
		}
	}
	if _, err := BuiltinShape("gpt2"); err == nil {
		t.Error("an unknown shape was accepted")
	}
}

func TestNewRandomRunsAForwardPass(t *testing.T) {
	cfg, err := BuiltinShape("llama3-8b")
	if err != nil {
		t.Fatal(err)
	}
	// A tiny model of the same family.
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHiddenLayers, cfg.VocabSize = 64, 96, 2, 300
	cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim = 4, 2, 16
	m, err := NewRandom(testDevice, cfg, gpu.BF16, 8, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	w, err := m.NewWorkspace(1, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Release()
	b := Batch{Rows: 1, Seq: 8, InputIDs: []int32{1, 2, 3, 4, 5, 6, 7, 8}, Mask: []int32{1, 1, 1, 1, 1, 1, 1, 1},
		Labels: []int32{-100, -100, -100, -100, 5, 6, 7, 8}}
	if err := w.Load(m, b); err != nil {
		t.Fatal(err)
	}
	rec := testDevice.NewRecorder()
	defer rec.Release()
	if err := m.Forward(rec, w, nil); err != nil {
		t.Fatal(err)
	}
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
	loss, err := w.Loss.Download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Random weights with std 0.02 give nearly uniform predictions: loss ~ ln(300).
	if loss[0] < 5.2 || loss[0] > 6.2 {
		t.Errorf("loss %v, want about ln(300) = 5.70", loss[0])
	}
}

// WeightBytes counts what the random model allocates, byte for byte: float
// matrices, quantized ones (scales in the weights' dtype) and, when the group
// does not divide a matrix's input size (down_proj's 96 with groups of 64),
// the float matrices that quantization leaves; without the embedding table
// when it stays in host memory.
func TestWeightBytesCountsAllocation(t *testing.T) {
	cfg, err := BuiltinShape("llama3-8b")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHiddenLayers, cfg.VocabSize = 64, 96, 2, 300
	cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, cfg.MaxPositionEmbeddings = 4, 2, 16, 8
	for _, c := range []struct {
		dtype gpu.DType
		q     *Quantization
		host  bool
	}{{gpu.F32, nil, false}, {gpu.BF16, nil, false}, {gpu.BF16, &Quantization{Bits: 4, GroupSize: 64}, false}, {gpu.F32, &Quantization{Bits: 8, GroupSize: 32}, false},
		{gpu.F32, nil, true}, {gpu.BF16, &Quantization{Bits: 4, GroupSize: 64}, true}} {
		base := testDevice.LiveBytes()
		m, err := NewRandomWith(testDevice, cfg, LoadOptions{DType: c.dtype, Quantize: c.q, HostEmbedding: c.host}, cfg.MaxPositionEmbeddings, 7)
		if err != nil {
			t.Fatal(err)
		}
		got := testDevice.LiveBytes() - base
		m.Release()
		if (m.HostEmbed != nil) != c.host || (m.Embed != nil) == c.host {
			t.Errorf("%s %+v host %t: the table is in host memory: %t, on the GPU: %t", c.dtype, c.q, c.host, m.HostEmbed != nil, m.Embed != nil)
		}
		var q Quantization
		if c.q != nil {
			q = *c.q
			if m.Config.Quantization == nil || m.Config.Quantization.Default != q {
				t.Errorf("%s %+v: the model's config names quantization %+v", c.dtype, q, m.Config.Quantization)
			}
		}
		if want := cfg.WeightBytes(c.dtype, c.dtype, q, c.host); uint64(got) != want {
			t.Errorf("%s %+v host %t: allocated %d bytes, WeightBytes %d", c.dtype, q, c.host, got, want)
		}
	}
}
