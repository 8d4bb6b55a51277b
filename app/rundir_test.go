package app

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGHUP (a closed terminal or SSH session) stops a run as SIGINT does: a
// checkpoint and exit 130. While it runs, its --out is locked.
func TestInterruptByHangupCheckpoints(t *testing.T) {
	interruptChild()
	out := t.TempDir()
	args := trainArgs(t, out, "--max-steps", "60", "--log-every", "1", "--sparsity", "dense")
	t.Setenv("SPARSELORA_CHILD_ARGS", strings.Join(args, "\n"))
	cmd, stderr := startChild(t, "main")
	waitForSteps(t, cmd, stderr, out, 2)
	// A second run on the same --out, started meanwhile, refuses at once.
	start := time.Now()
	code, _, errOut := run(t, append(args, "--resume")...)
	if code == 0 || !strings.Contains(errOut, "in use by another sparselora train") || time.Since(start) > 10*time.Second {
		t.Errorf("a concurrent run: exit %d after %v, stderr %q; want a refusal naming the lock", code, time.Since(start), errOut)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	code, _ = waitExit(t, cmd, 30*time.Second)
	checkpoints, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
	if code != ExitInterrupted || len(checkpoints) != 1 {
		t.Fatalf("SIGHUP: exit %d, checkpoints %v; want %d and one checkpoint; stderr:\n%s", code, checkpoints, ExitInterrupted, stderr)
	}
}

// A closed stdout (a pager that quit) does not kill training: the run
// finishes, saves its adapter, and the log goes on on stderr.
func TestInterruptNotByClosedStdout(t *testing.T) {
	interruptChild()
	out := t.TempDir()
	args := trainArgs(t, out, "--max-steps", "6", "--log-every", "1", "--sparsity", "dense")
	t.Setenv("SPARSELORA_CHILD_ARGS", strings.Join(args, "\n"))
	cmd := exec.Command(os.Args[0], "-test.run=^TestInterrupt")
	cmd.Env = append(os.Environ(), "SPARSELORA_INTERRUPT_CHILD=main")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	stdout.Close() // as `sparselora train ... | head -1`
	code, _ := waitExit(t, cmd, 120*time.Second)
	if !strings.HasPrefix(line, "adapter:") || code != 0 {
		t.Fatalf("exit %d (first line %q), want 0; stderr:\n%s", code, line, &stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "adapter_model.safetensors")); err != nil {
		t.Errorf("no adapter after the run: %v", err)
	}
	if n := metricsLines(out); n != 6 {
		t.Errorf("metrics.jsonl has %d lines, want 6", n)
	}
	if !strings.Contains(stderr.String(), "writing to stdout failed") || !strings.Contains(stderr.String(), "done: 6 steps") {
		t.Errorf("stderr does not carry on the log:\n%s", &stderr)
	}
}

func waitForSteps(t *testing.T, cmd *exec.Cmd, stderr *bytes.Buffer, out string, steps int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for metricsLines(out) < steps {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no training step logged within a minute; stderr:\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A run directory is owned: a second run refuses an --out holding an
// earlier run's results unless --overwrite (or --resume), and the model
// directory is never a run directory.
func TestTrainRunDirOwnership(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	args := trainArgs(t, out, "--max-steps", "1", "--sparsity", "dense")
	if code, stdout, errOut := run(t, args...); code != 0 {
		t.Fatalf("first run: exit %d\n%s\n%s", code, stdout, errOut)
	}
	adapter, _ := os.ReadFile(filepath.Join(out, "adapter_model.safetensors"))
	code, _, errOut := run(t, append(args, "--seed", "7")...)
	if code == 0 || !strings.Contains(errOut, "adapter_model.safetensors") || !strings.Contains(errOut, "--overwrite") {
		t.Fatalf("second run: exit %d, stderr %q; want a refusal naming the adapter and --overwrite", code, errOut)
	}
	if now, _ := os.ReadFile(filepath.Join(out, "adapter_model.safetensors")); !bytes.Equal(now, adapter) {
		t.Fatal("the refused run changed the first run's adapter")
	}
	if code, stdout, errOut := run(t, append(args, "--seed", "7", "--overwrite")...); code != 0 {
		t.Fatalf("--overwrite: exit %d\n%s\n%s", code, stdout, errOut)
	}
	if now, _ := os.ReadFile(filepath.Join(out, "adapter_model.safetensors")); bytes.Equal(now, adapter) {
		t.Error("--overwrite kept the first run's adapter")
	}
	// The resolved config, passed back with --resume, does not carry --overwrite.
	if resolved, _ := os.ReadFile(filepath.Join(out, "train_config.yaml")); strings.Contains(string(resolved), "overwrite") {
		t.Errorf("train_config.yaml records --overwrite:\n%s", resolved)
	}
	code, _, errOut = run(t, trainArgs(t, fixtureModel(t), "--max-steps", "1")...)
	if code == 0 || !strings.Contains(errOut, "is the model directory") {
		t.Errorf("--out = --model: exit %d, stderr %q", code, errOut)
	}
}

// copyDir copies the files of src into a new folder.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), raw, 0o644)
	}
	return dst
}

// --resume refuses a checkpoint trained on another base model, other data
// or another adapter shape, naming what changed; with everything unchanged a
// finished run reports its real final loss.
func TestTrainResumeChecksInputs(t *testing.T) {
	modelDir := copyDir(t, fixtureModel(t))
	dataPath := filepath.Join(t.TempDir(), "data.jsonl")
	original, _ := os.ReadFile(filepath.Join("..", "train", "testdata", "sequences.jsonl"))
	os.WriteFile(dataPath, original, 0o644)
	out := filepath.Join(t.TempDir(), "run")
	args := []string{"train", "--model", modelDir, "--data", dataPath, "--out", out, "--batch-size", "2", "--rank", "4",
		"--lr", "1e-2", "--sparsity", "dense", "--no-window", "--max-steps", "2", "--save-every", "1", "--log-every", "1"}
	if code, stdout, errOut := run(t, args...); code != 0 {
		t.Fatalf("first run: exit %d\n%s\n%s", code, stdout, errOut)
	}
	resume := append(args[:len(args):len(args)], "--resume")

	code, _, errOut := run(t, append(resume, "--rank", "8")...)
	if code == 0 || !strings.Contains(errOut, "rank=4 then, 8 now") {
		t.Errorf("--rank changed: exit %d, stderr %q", code, errOut)
	}

	edited := bytes.Replace(original, []byte("1"), []byte("2"), 1)
	os.WriteFile(dataPath, edited, 0o644)
	code, _, errOut = run(t, resume...)
	if code == 0 || !strings.Contains(errOut, "data-sha256=") || !strings.Contains(errOut, "training data's content changed") {
		t.Errorf("data edited: exit %d, stderr %q", code, errOut)
	}
	os.WriteFile(dataPath, original, 0o644)

	weights := filepath.Join(modelDir, "model.safetensors")
	st, err := os.Stat(weights)
	if err != nil {
		t.Fatal(err)
	}
	os.Chtimes(weights, st.ModTime(), st.ModTime().Add(time.Hour))
	code, _, errOut = run(t, resume...)
	if code == 0 || !strings.Contains(errOut, "model=") || !strings.Contains(errOut, "base model's files differ") {
		t.Errorf("model touched: exit %d, stderr %q", code, errOut)
	}
	os.Chtimes(weights, st.ModTime(), st.ModTime())

	code, stdout, errOut := run(t, resume...)
	var last struct{ Loss float64 }
	raw, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	json.Unmarshal([]byte(lines[len(lines)-1]), &last)
	if code != 0 || !strings.Contains(stdout, "nothing to resume: the run finished at step 2") || last.Loss == 0 ||
		!strings.Contains(stdout, fmt.Sprintf("final loss %.4f", last.Loss)) {
		t.Errorf("resuming the finished run: exit %d, last loss %v\n%s\n%s", code, last.Loss, stdout, errOut)
	}
}

// With --verify on both runs, a resume accepts the same model copied to
// another folder (its files' paths and times differ, their content does not);
// without it, the copy is refused.
func TestTrainResumeVerifyAcceptsACopiedModel(t *testing.T) {
	modelDir := copyDir(t, fixtureModel(t))
	out := filepath.Join(t.TempDir(), "run")
	args := func(model string, extra ...string) []string {
		return append([]string{"train", "--model", model, "--data", filepath.Join("..", "train", "testdata", "sequences.jsonl"), "--out", out,
			"--batch-size", "2", "--rank", "4", "--sparsity", "dense", "--no-window", "--max-steps", "2", "--save-every", "1", "--keep", "1"}, extra...)
	}
	if code, stdout, errOut := run(t, args(modelDir, "--verify")...); code != 0 {
		t.Fatalf("first run: exit %d\n%s\n%s", code, stdout, errOut)
	}
	copied := copyDir(t, modelDir)
	if code, _, errOut := run(t, args(copied, "--resume")...); code == 0 || !strings.Contains(errOut, "model=") {
		t.Errorf("a copied model without --verify: exit %d, stderr %q; want a refusal naming the model", code, errOut)
	}
	if code, stdout, errOut := run(t, args(copied, "--resume", "--verify")...); code != 0 || !strings.Contains(stdout, "nothing to resume") {
		t.Errorf("a copied model with --verify: exit %d\n%s\n%s", code, stdout, errOut)
	}
}
