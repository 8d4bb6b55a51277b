package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// trainArgs is a short run on the llama-gqa fixture with pre-tokenized data.
func trainArgs(t *testing.T, out string, extra ...string) []string {
	t.Helper()
	return append([]string{"train", "--model", fixtureModel(t), "--data", filepath.Join("..", "train", "testdata", "sequences.jsonl"),
		"--out", out, "--batch-size", "2", "--rank", "4", "--lr", "1e-2", "--svd-cache", filepath.Join(t.TempDir(), "svd"), "--no-window"}, extra...)
}

func metricsLines(dir string) int {
	raw, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	return bytes.Count(raw, []byte("\n"))
}

// TestTrainInterruptAndResume runs `sparselora train` as a process, sends it
// SIGINT mid-run, checks the exit code and the checkpoint, then resumes the
// run to its end.
func TestTrainInterruptAndResume(t *testing.T) {
	interruptChild()
	out := t.TempDir()
	args := trainArgs(t, out, "--max-steps", "60", "--log-every", "1", "--sparsity", "dense")
	t.Setenv("SPARSELORA_CHILD_ARGS", strings.Join(args, "\n"))
	cmd, stderr := startChild(t, "main")
	deadline := time.Now().Add(60 * time.Second)
	for metricsLines(out) < 2 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no training step logged within a minute; stderr:\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	code, took := waitExit(t, cmd, 20*time.Second)
	if code != ExitInterrupted || took > 10*time.Second {
		t.Fatalf("exit %d after %v, want %d within seconds; stderr:\n%s", code, took, ExitInterrupted, stderr)
	}
	checkpoints, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
	if len(checkpoints) != 1 {
		t.Fatalf("checkpoints %v after the interrupt, want one", checkpoints)
	}
	for _, f := range []string{"adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"} {
		if _, err := os.Stat(filepath.Join(checkpoints[0], f)); err != nil {
			t.Errorf("checkpoint lacks %s: %v", f, err)
		}
	}
	interruptedAt := metricsLines(out)
	if interruptedAt >= 60 {
		t.Fatalf("the run reached step %d: the interrupt came too late to test", interruptedAt)
	}
	code, stdout, errOut := run(t, append(args, "--resume")...)
	if code != 0 || !strings.Contains(stdout, "resuming at step") {
		t.Fatalf("resume: exit %d\n%s\n%s", code, stdout, errOut)
	}
	if n := metricsLines(out); n != 60 {
		t.Errorf("metrics.jsonl has %d lines after the resumed run, want one per step (60)", n)
	}
	if _, err := os.Stat(filepath.Join(out, "adapter_model.safetensors")); err != nil {
		t.Errorf("no final adapter: %v", err)
	}
}

// TestTrainConfigFile checks that a YAML file sets flags by name, that
// command-line flags win, and that an unknown key is named with its line.
func TestTrainConfigFile(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "run")
	config := filepath.Join(dir, "train.yaml")
	os.WriteFile(config, []byte("max-steps: 2\nlog-every: 1\nsparsity: dense\nlr: 1.0e-3\n"), 0o644)
	code, stdout, errOut := run(t, trainArgs(t, out, "--config", config, "--lr", "5e-3")...)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, errOut)
	}
	resolved, _ := os.ReadFile(filepath.Join(out, "train_config.yaml"))
	for _, want := range []string{"max-steps: 2", "lr: 0.005", "sparsity: dense"} {
		if !strings.Contains(string(resolved), want) {
			t.Errorf("train_config.yaml lacks %q:\n%s", want, resolved)
		}
	}
	os.WriteFile(config, []byte("max-steps: 2\nlearning_rate: 1\n"), 0o644)
	code, _, errOut = run(t, trainArgs(t, filepath.Join(dir, "run2"), "--config", config)...)
	if code == 0 || !strings.Contains(errOut, "line 2") || !strings.Contains(errOut, "learning_rate") {
		t.Errorf("unknown key: exit %d, stderr %q; want the key and its line", code, errOut)
	}
	for body, want := range map[string]string{
		"max_steps: 2\n":       "did you mean max-steps",
		"rank: 8\nrank: 9\n":   "already set on line 1",
		"warmup-ratio: fast\n": `"fast" is not a valid value`,
		"targets: [q, v]\n":    "wants a single value",
		"- max-steps\n":        "want a mapping",
	} {
		os.WriteFile(config, []byte(body), 0o644)
		code, _, errOut = run(t, trainArgs(t, filepath.Join(dir, "run3"), "--config", config)...)
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("config %q: exit %d, stderr %q; want %q", body, code, errOut, want)
		}
	}
}

// TestTrainRejectsBadInput checks errors that name the file and line or the
// flag, before any training.
func TestTrainRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2,\n"), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"train", "--model", fixtureModel(t), "--data", bad, "--out", filepath.Join(dir, "o")}, "bad.jsonl:2"},
		{append(trainArgs(t, filepath.Join(dir, "o2")), "--batch-size", "0"), "--batch-size"},
		{append(trainArgs(t, filepath.Join(dir, "o3")), "--schedule", "steps"), "--schedule"},
		{append(trainArgs(t, filepath.Join(dir, "o4")), "--sparsity", "nope"), "--sparsity"},
		{[]string{"train", "--data", bad, "--out", dir}, "--model"},
		{append(trainArgs(t, filepath.Join(dir, "o5")), "extra"), "unexpected argument"},
	}
	for _, c := range cases {
		code, _, errOut := run(t, c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want an error naming %q", c.args[len(c.args)-2:], code, errOut, c.want)
		}
	}
}
