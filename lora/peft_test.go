package lora

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/gpu"
	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// logitsOf runs the model on a fixed batch and returns all logits.
func logitsOf(t *testing.T, m *model.Model) []float32 {
	t.Helper()
	const rows, seq = 2, 9
	ws, err := m.NewWorkspace(rows, seq)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Release()
	b := model.Batch{Rows: rows, Seq: seq}
	for i := range rows * seq {
		b.InputIDs = append(b.InputIDs, int32((i*37+5)%m.Config.VocabSize))
		b.Mask = append(b.Mask, 1)
		b.Labels = append(b.Labels, -100)
	}
	if err := ws.Load(m, b); err != nil {
		t.Fatal(err)
	}
	out, err := m.Dev.NewTensor(gpu.F32, "logits", rows*seq, m.Config.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Release()
	rec := m.Dev.NewRecorder()
	defer rec.Release()
	if err := m.Trunk(rec, ws, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Logits(rec, ws, out); err != nil {
		t.Fatal(err)
	}
	if err := rec.Submit(); err != nil {
		t.Fatal(err)
	}
	v, err := out.Download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func bitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

func loadFixtureModel(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Load(testDevice, filepath.Join(fixtures.HF(t, "llama-gqa"), "model"), gpu.F32)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPEFTRoundTrip(t *testing.T) {
	m := loadFixtureModel(t)
	defer m.Release()
	src := filepath.Join(fixtures.HF(t, "llama-gqa"), "adapter_init")
	s, err := Load(m, src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	if s.Config.Rank != 8 || s.Config.Alpha != 16 || len(s.Config.Targets) != 7 || len(s.Adapters) != 21 {
		t.Fatalf("loaded %+v with %d adapters", s.Config, len(s.Adapters))
	}
	s.Attach(m)
	before := logitsOf(t, m)

	dir := filepath.Join(t.TempDir(), "saved")
	if err := s.Save(dir); err != nil {
		t.Fatal(err)
	}
	// PEFT's file names, keys, dtypes and shapes.
	ours, err := safetensors.Open(filepath.Join(dir, WeightsFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	theirs, err := safetensors.Open(filepath.Join(src, WeightsFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	if !slices.Equal(ours.Names(), theirs.Names()) {
		t.Fatalf("saved keys differ from PEFT's:\n%v\n%v", ours.Names(), theirs.Names())
	}
	for _, name := range theirs.Names() {
		a, _ := ours.Info(name)
		b, _ := theirs.Info(name)
		if a.Dtype != b.Dtype || !slices.Equal(a.Shape, b.Shape) {
			t.Errorf("%s: saved %s %v, PEFT %s %v", name, a.Dtype, a.Shape, b.Dtype, b.Shape)
		}
		va, _ := ours.ReadFloat32(name)
		vb, _ := theirs.ReadFloat32(name)
		if !bitsEqual(va, vb) {
			t.Errorf("%s: values changed in the round trip", name)
		}
	}
	var cfg map[string]any
	raw, err := os.ReadFile(filepath.Join(dir, ConfigFileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["peft_type"] != "LORA" || cfg["r"] != 8.0 || cfg["lora_alpha"] != 16.0 || cfg["task_type"] != "CAUSAL_LM" {
		t.Errorf("adapter_config.json: %s", raw)
	}

	reloaded, err := Load(m, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reloaded.Release()
	reloaded.Attach(m)
	if after := logitsOf(t, m); !bitsEqual(before, after) {
		t.Error("logits differ after saving and reloading the adapter")
	}
}

func TestNewSetStartsAsTheBaseModel(t *testing.T) {
	m := loadFixtureModel(t)
	defer m.Release()
	base := logitsOf(t, m)
	s, err := NewSet(m, Config{Rank: 4, Alpha: 8, Targets: []model.Projection{model.ProjQ, model.ProjV, model.ProjDown}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	s.Attach(m)
	if !bitsEqual(base, logitsOf(t, m)) {
		t.Error("a freshly initialised adapter (B = 0) changed the logits")
	}
	if len(s.Params()) != 2*3*len(m.Layers) {
		t.Errorf("%d params", len(s.Params()))
	}
}

func TestLoadRejectsBadAdapters(t *testing.T) {
	m := loadFixtureModel(t)
	defer m.Release()
	src := filepath.Join(fixtures.HF(t, "llama-gqa"), "adapter_init")
	copyWith := func(edit func(cfg map[string]any)) string {
		dir := t.TempDir()
		raw, _ := os.ReadFile(filepath.Join(src, ConfigFileName))
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		edit(cfg)
		out, _ := json.Marshal(cfg)
		os.WriteFile(filepath.Join(dir, ConfigFileName), out, 0o644)
		weights, _ := os.ReadFile(filepath.Join(src, WeightsFileName))
		os.WriteFile(filepath.Join(dir, WeightsFileName), weights, 0o644)
		return dir
	}
	for _, c := range []struct {
		name, want string
		edit       func(map[string]any)
	}{
		{"dora", "use_dora", func(c map[string]any) { c["use_dora"] = true }},
		{"wrong rank", "lora_A.weight has shape", func(c map[string]any) { c["r"] = 4 }},
		{"not lora", "peft_type", func(c map[string]any) { c["peft_type"] = "IA3" }},
		{"rank pattern", "rank_pattern", func(c map[string]any) { c["rank_pattern"] = map[string]any{"q_proj": 2} }},
	} {
		_, err := Load(m, copyWith(c.edit))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
	if _, err := Load(m, t.TempDir()); err == nil || !strings.Contains(err.Error(), ConfigFileName) {
		t.Errorf("missing adapter: %v", err)
	}
}
