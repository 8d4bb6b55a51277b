package model

import (
	"math"
	"testing"
)

// FuzzParseConfig feeds arbitrary config.json contents to ParseConfig: no
// panic, and whatever it accepts is within the size limits, so that the
// tensor list, the parameter count and the RoPE table it implies stay small
// enough to compute. The seed corpus is in testdata/fuzz/FuzzParseConfig.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}`))
	f.Add([]byte(`{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1000000, "num_attention_heads": 2}`))
	f.Add([]byte(llama31Body + `}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data, "fuzz/config.json")
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted a config Validate rejects: %v", err)
		}
		if c.NumHiddenLayers > MaxLayers || c.HiddenSize > MaxHiddenSize || c.VocabSize > MaxVocabSize ||
			c.IntermediateSize > MaxIntermediateSize || c.MaxPositionEmbeddings > MaxPositionEmbeddings {
			t.Fatalf("accepted sizes beyond the limits: %+v", c)
		}
		if n := len(ExpectedTensors(c)); n > 2+9*MaxLayers+7*MaxLayers+1 {
			t.Fatalf("%d expected tensors", n)
		}
		if c.ParameterCount() <= 0 {
			t.Fatalf("parameter count %d", c.ParameterCount())
		}
		for i, f := range c.InvFreq() {
			if math.IsNaN(f) || f < 0 {
				t.Fatalf("InvFreq[%d] = %g for rope %+v", i, f, c.Rope)
			}
		}
	})
}
