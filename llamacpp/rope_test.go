package llamacpp

import (
	"math"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/model"
)

// llama3Config is a config with Llama 3's RoPE scaling.
func llama3Config(t *testing.T, headDim int, theta, factor, low, high float64, old int) *model.Config {
	t.Helper()
	cfg := &model.Config{HeadDim: headDim, Rope: model.Rope{Type: model.RopeLlama3, Theta: theta, Factor: factor,
		LowFreqFactor: low, HighFreqFactor: high, OriginalMaxPositionEmbeddings: old}}
	return cfg
}

// TestLlama3ScalingRecovered: the rope_freqs factors of Llama 3.1 and 3.2
// and of a small-context config give back a scaling whose frequencies equal
// the original's to float32 rounding; Llama 3's own parameters come back as
// they are; factors no llama3 scaling makes are refused.
func TestLlama3ScalingRecovered(t *testing.T) {
	for _, c := range []struct {
		name      string
		cfg       *model.Config
		wantExact bool
	}{
		{"llama-3.1-8b", llama3Config(t, 128, 500000, 8, 1, 4, 8192), true},
		{"llama-3.2-1b", llama3Config(t, 64, 500000, 32, 1, 4, 8192), true},
		{"small context", llama3Config(t, 24, 10000, 8, 1, 4, 64), false},
		{"odd factors", llama3Config(t, 32, 10000, 3, 2, 7, 100), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			factors := ropeFactors(c.cfg)
			s, err := llama3Scaling(factors, c.cfg.HeadDim, c.cfg.Rope.Theta)
			if err != nil {
				t.Fatal(err)
			}
			back := llama3Config(t, c.cfg.HeadDim, c.cfg.Rope.Theta, s["factor"].(float64), s["low_freq_factor"].(float64),
				s["high_freq_factor"].(float64), s["original_max_position_embeddings"].(int))
			if c.wantExact && back.Rope != c.cfg.Rope {
				t.Errorf("recovered %+v, want %+v", back.Rope, c.cfg.Rope)
			}
			want, got := c.cfg.InvFreq(), back.InvFreq()
			for i := range want {
				if math.Abs(got[i]-want[i]) > 1e-6*want[i] {
					t.Errorf("frequency %d: %g, want %g", i, got[i], want[i])
				}
			}
		})
	}
	bad := ropeFactors(llama3Config(t, 24, 10000, 8, 1, 4, 64))
	bad[6] = 5 // a third interpolated factor off the line the other two set
	if _, err := llama3Scaling(bad, 24, 10000); err == nil || !strings.Contains(err.Error(), ropeFreqsName) {
		t.Errorf("edited factors: error %v, want one naming %s", err, ropeFreqsName)
	}
	if _, err := llama3Scaling(bad[:5], 24, 10000); err == nil || !strings.Contains(err.Error(), "want head_dim/2 = 12") {
		t.Errorf("short tensor: error %v", err)
	}
}
