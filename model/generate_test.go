package model

import (
	"math/rand/v2"
	"testing"
)

func TestGreedyTakesTheFirstMaximum(t *testing.T) {
	if got := Greedy().Next([]float32{1, 3, -2, 3}); got != 1 {
		t.Errorf("got %d, want 1 (ties go to the lowest id, as torch.argmax)", got)
	}
}

func TestSamplingRespectsTemperatureAndTopP(t *testing.T) {
	logits := []float32{2, 1, 0, -1, -30}
	rng := rand.New(rand.NewPCG(1, 2))
	// softmax(logits) ~ [0.644, 0.237, 0.087, 0.032, ~0]: top-p 0.8 keeps ids 0 and 1.
	s := Sampling{Temperature: 1, TopP: 0.8, Rand: rng}
	counts := map[int32]int{}
	for range 4000 {
		counts[s.Next(logits)]++
	}
	if counts[2]+counts[3]+counts[4] != 0 {
		t.Errorf("tokens outside the nucleus were drawn: %v", counts)
	}
	if share := float64(counts[0]) / 4000; share < 0.69 || share > 0.77 { // 0.644/(0.644+0.237) = 0.731
		t.Errorf("token 0 drawn %.3f of the time, want about 0.731", share)
	}
	cold := Sampling{Temperature: 0, Rand: rng}
	if got := cold.Next(logits); got != 0 {
		t.Errorf("temperature 0 drew %d, want the argmax", got)
	}
}
