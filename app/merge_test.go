package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/model/safetensors"
)

// The command end to end: a sharded bf16 merge that model.Load's checks accept.
// The merged values themselves are checked in package lora.
func TestMergeCommandWritesCheckpoint(t *testing.T) {
	dir := fixtures.HF(t, "qwen2-bias")
	out := filepath.Join(t.TempDir(), "merged")
	code, stdout, stderr := run(t, "merge", "--model", filepath.Join(dir, "model"), "--adapter", filepath.Join(dir, "adapter_init"),
		"--out", out, "--dtype", "bf16", "--max-shard-size", "100KB")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "merged 14 projections") || !strings.Contains(stdout, "model.safetensors.index.json") {
		t.Errorf("stdout: %s", stdout)
	}
	cfg, err := model.LoadConfig(out)
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := safetensors.OpenDir(out)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	if _, err := model.VerifyCheckpoint(cfg, ckpt); err != nil {
		t.Error(err)
	}
	info, err := ckpt.Info("model.layers.1.mlp.down_proj.weight")
	if err != nil || info.Dtype != safetensors.BF16 {
		t.Errorf("down_proj: %+v, %v", info, err)
	}

	// Run again: refused without --force, replaced with it.
	args := []string{"merge", "--model", filepath.Join(dir, "model"), "--adapter", filepath.Join(dir, "adapter_init"), "--out", out}
	if code, _, stderr := run(t, args...); code != 1 || !strings.Contains(stderr, "not empty") || !strings.Contains(stderr, "--force") {
		t.Errorf("existing output: exit %d, %s", code, stderr)
	}
	if code, stdout, stderr := run(t, append(args, "--force")...); code != 0 {
		t.Errorf("--force: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "model.safetensors.index.json")); err == nil {
		t.Error("the forced merge kept the old shards")
	}
}

func TestMergeCommandRejectsBadFlags(t *testing.T) {
	llama, qwen := fixtures.HF(t, "llama-gqa"), fixtures.HF(t, "qwen2-bias")
	modelDir, adapter := filepath.Join(llama, "model"), filepath.Join(llama, "adapter_init")
	out := filepath.Join(t.TempDir(), "out")
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no model", []string{"--adapter", adapter, "--out", out}, 2, "--model is required"},
		{"no out", []string{"--model", modelDir, "--adapter", adapter}, 2, "--out is required"},
		{"stray argument", []string{"--model", modelDir, "--adapter", adapter, "--out", out, "extra"}, 2, "unexpected argument"},
		{"bad dtype", []string{"--model", modelDir, "--adapter", adapter, "--out", out, "--dtype", "f8"}, 1, "--dtype"},
		{"bad shard size", []string{"--model", modelDir, "--adapter", adapter, "--out", out, "--max-shard-size", "big"}, 1, "--max-shard-size"},
		{"missing model", []string{"--model", filepath.Join(llama, "nope"), "--adapter", adapter, "--out", out}, 1, "model directory"},
		{"adapter with fewer layers", []string{"--model", modelDir, "--adapter", filepath.Join(qwen, "adapter_init"), "--out", out}, 1,
			"no weights for base_model.model.model.layers.2.self_attn.q_proj"},
		{"adapter with more layers", []string{"--model", filepath.Join(qwen, "model"), "--adapter", adapter, "--out", out}, 1,
			"is not one of the model's 2 layers"},
	} {
		code, stdout, stderr := run(t, append([]string{"merge"}, c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d (want %d), stderr %q, want it to mention %q\n%s", c.name, code, c.code, stderr, c.want, stdout)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed merge created the output")
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"5GB": 5e9, "100KB": 1e5, "2MiB": 2 << 20, "1.5gb": 1.5e9, "4096": 4096, "10 MB": 1e7} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1GB", "GB", "0.1B", "1TB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}
