package llamacpp

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
)

// TestAffineFromBlocksKeepsLargeOffsetsExact: Q8_0 and Q4_0 blocks whose
// -128·d or -8·d overflow f16 make the weight's scales f32, and every
// dequantized value still equals ggml's; ordinary blocks keep f16 scales.
func TestAffineFromBlocksKeepsLargeOffsetsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		typ      gguf.TensorType
		d        float32
		wantWide bool
	}{
		{gguf.Q8_0, 0.01, false}, {gguf.Q8_0, 600, true}, {gguf.Q8_0, -511.5, false},
		{gguf.Q4_0, 300, false}, {gguf.Q4_0, -9000, true}, {gguf.Q4_1, 60000, false},
	} {
		const out, in = 3, 64
		blockBytes := map[gguf.TensorType]int{gguf.Q8_0: 34, gguf.Q4_0: 18, gguf.Q4_1: 20}[c.typ]
		var raw []byte
		for range out * in / 32 {
			blk := make([]byte, blockBytes)
			for i := range blk {
				blk[i] = byte(rng.IntN(256))
			}
			binary.LittleEndian.PutUint16(blk, safetensors.Float32ToHalf(c.d))
			if c.typ == gguf.Q4_1 {
				binary.LittleEndian.PutUint16(blk[2:], safetensors.Float32ToHalf(-c.d))
			}
			raw = append(raw, blk...)
		}
		w, err := affineFromBlocks(c.typ, raw, out, in)
		if err != nil {
			t.Fatal(err)
		}
		if wide := w.Format.Scales == gpu.ScaleF32; wide != c.wantWide {
			t.Errorf("%s d=%g: f32 scales %v, want %v", c.typ, c.d, wide, c.wantWide)
		}
		want, err := gguf.Decode(c.typ, raw, out*in)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range w.Dequantize() {
			if v != want[i] {
				t.Fatalf("%s d=%g: element %d is %g, ggml's %g", c.typ, c.d, i, v, want[i])
			}
		}
	}
	if _, err := affineFromBlocks(gguf.Q8_0, make([]byte, 33), 1, 32); err == nil {
		t.Error("a short block was accepted")
	}
}
