package llamacpp

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model/gguf"
	"github.com/sparselora/sparselora/model/safetensors"
	"github.com/sparselora/sparselora/tokenizer"
)

func export(t *testing.T, opts ExportOptions) []byte {
	t.Helper()
	if opts.Out == "" {
		opts.Out = filepath.Join(t.TempDir(), "out.gguf")
	}
	rep, err := Export(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if opts.AdapterDir != "" && len(rep.Merged) == 0 {
		t.Fatalf("adapter %s merged into no weight", opts.AdapterDir)
	}
	data, err := os.ReadFile(opts.Out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestRoundTrip: export -> ToHF -> export is byte-identical (f32), the
// imported weights equal the merged base bit for bit, and the imported
// tokenizer encodes (special tokens and chat template included) as the
// original does.
func TestRoundTrip(t *testing.T) {
	for _, c := range []struct{ name, model, adapter string }{
		{"tiny", tinyDir, ""},
		{"llama-gqa+adapter", fixtureModel(t, llamaGQADir), filepath.Join(llamaGQADir, "adapter_init")},
		{"qwen2-bias+adapter", fixtureModel(t, qwen2Dir), filepath.Join(qwen2Dir, "adapter_init")},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			first := filepath.Join(dir, "a.gguf")
			image := export(t, ExportOptions{ModelDir: c.model, AdapterDir: c.adapter, Type: gguf.F32, TypeSet: true, Out: first})
			hf := filepath.Join(dir, "hf")
			os.Mkdir(hf, 0o755)
			if _, err := ToHF(first, hf); err != nil {
				t.Fatal(err)
			}
			again := export(t, ExportOptions{ModelDir: hf, Type: gguf.F32, TypeSet: true})
			if !bytes.Equal(image, again) {
				t.Fatalf("export -> import -> export: %d bytes vs %d, differ", len(image), len(again))
			}
			merged, err := lora.OpenMerged(c.model, c.adapter)
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Close()
			imported, err := safetensors.Open(filepath.Join(hf, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer imported.Close()
			for _, name := range imported.Names() {
				want, err := merged.ReadFloat32(name)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := imported.ReadFloat32(name)
				if !slices.Equal(got, want) {
					t.Fatalf("tensor %s differs after export and import", name)
				}
			}
			orig, err := tokenizer.Load(c.model)
			if err != nil {
				t.Fatal(err)
			}
			back, err := tokenizer.Load(hf)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(5, 6))
			texts := []string{"Hello world", " leading space", "a\n\nb  c\t", "<|user|>x<|assistant|>", "naïve café 123 4567", ""}
			for range 20 {
				b := make([]byte, rng.IntN(40))
				for i := range b {
					b[i] = " ab\ncdé0129.,?!<|>"[rng.IntN(19)]
				}
				texts = append(texts, strings.ToValidUTF8(string(b), "?"))
			}
			for _, s := range texts {
				for _, special := range []bool{false, true} {
					if a, b := orig.Encode(s, special), back.Encode(s, special); !slices.Equal(a, b) {
						t.Fatalf("%q (special %v): imported tokenizer gives %v, original %v", s, special, b, a)
					}
				}
			}
			msgs, _ := json.Marshal([]map[string]string{{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}})
			a, errA := orig.ApplyChatTemplate(msgs, true)
			b, errB := back.ApplyChatTemplate(msgs, true)
			if errA != nil || a != b {
				t.Fatalf("chat template: %q (%v) vs %q (%v)", b, errB, a, errA)
			}
		})
	}
}

func TestPermuteRowsInverts(t *testing.T) {
	heads, hd, cols := 3, 6, 5
	v := make([]float32, heads*hd*cols)
	for i := range v {
		v[i] = float32(i)
	}
	p, err := permuteRows(v, heads, cols, false)
	if err != nil {
		t.Fatal(err)
	}
	// Row 1 of head 2 is old row hd/2 (t=1, j=0) of head 2.
	if p[(2*hd+1)*cols] != v[(2*hd+hd/2)*cols] {
		t.Fatal("permutation does not interleave the halves")
	}
	back, _ := permuteRows(p, heads, cols, true)
	if !slices.Equal(back, v) {
		t.Fatal("inverse permutation does not restore the rows")
	}
	if _, err := permuteRows(v, 4, cols, false); err == nil {
		t.Fatal("rows not divisible by heads accepted")
	}
}
