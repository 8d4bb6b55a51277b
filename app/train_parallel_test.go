package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sparselora/sparselora/model/safetensors"
)

// The mpirun tests start this test binary as every process of the job; the
// process runs the CLI with the arguments of SPARSELORA_MPI_ARGS (one per
// line), or SPARSELORA_MPI_ARGS_RANK1 on rank 1 when set.
const mpiArgsEnv = "SPARSELORA_MPI_ARGS"

func TestMPIHelperProcess(t *testing.T) {
	args := os.Getenv(mpiArgsEnv)
	if args == "" {
		return
	}
	if r1 := os.Getenv(mpiArgsEnv + "_RANK1"); r1 != "" && os.Getenv("OMPI_COMM_WORLD_RANK") == "1" {
		args = r1
	}
	ctx, interrupted, stop := HandleInterrupts(os.Stderr)
	code := Main(ctx, strings.Split(args, "\n"), os.Stdout, os.Stderr)
	if interrupted() {
		code = ExitInterrupted
	}
	stop()
	os.Exit(code)
}

// mpiJob is `mpirun -np 2` running the CLI; rank1, when given, replaces
// the arguments of rank 1. CI runs as root with 2 processes on fewer
// cores, hence --allow-run-as-root --oversubscribe.
func mpiJob(t *testing.T, ctx context.Context, args, rank1 []string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	mpirun, err := exec.LookPath("mpirun")
	if err != nil {
		t.Fatalf("mpirun not found (%v): `make setup` installs Open MPI (openmpi-bin) on Debian", err)
	}
	cmd := exec.CommandContext(ctx, mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", os.Args[0], "-test.run=^TestMPIHelperProcess$")
	cmd.Env = append(os.Environ(), mpiArgsEnv+"="+strings.Join(args, "\n"))
	if rank1 != nil {
		cmd.Env = append(cmd.Env, mpiArgsEnv+"_RANK1="+strings.Join(rank1, "\n"))
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

// runMPI runs a job to its end (at most 4 minutes) and returns its exit code.
func runMPI(t *testing.T, args, rank1 []string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd, out := mpiJob(t, ctx, args, rank1)
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

func readMetrics(t *testing.T, dir string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		var r map[string]any
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("metrics.jsonl: %v", err)
		}
		recs = append(recs, r)
	}
	return recs
}

func readTensors(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for _, name := range f.Names() {
		if out[name], err = f.ReadFloat32(name); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func closeTo(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(1, math.Abs(b)) }

// TestTrainMPITwoProcessesEqualOne: 2 processes at batch 1 take the
// examples one process at batch 2 takes, divide the loss by the same
// global target count and sum the gradients, so losses, gradient norms,
// the sharded evaluation and the trained tensors (LoRA adapters; every
// weight with --full) agree to 1e-6 (the sums are taken in another order,
// so not bit for bit). The learning rate is small because AdamW divides by
// the gradients' root mean square: where an element's gradient is at the
// level of rounding, its update is lr times noise (at 1e-2 adapters differ
// by 4e-6 after 4 steps, at 1e-4 by 2e-8).
func TestTrainMPITwoProcessesEqualOne(t *testing.T) {
	for _, c := range []struct {
		name, file string
		extra      []string
	}{{"lora", "adapter_model.safetensors", nil}, {"full", "model.safetensors", []string{"--full"}}} {
		t.Run(c.name, func(t *testing.T) {
			one, two := t.TempDir(), t.TempDir()
			common := append([]string{"--max-steps", "4", "--grad-accum", "2", "--log-every", "1", "--sparsity", "dense", "--gpu", "0", "--lr", "1e-4",
				"--eval-data", filepath.Join("..", "train", "testdata", "sequences.jsonl"), "--eval-every", "2"}, c.extra...)
			single := append(trainArgs(t, one, common...), "--batch-size", "2")
			var stdout, stderr bytes.Buffer
			if code := Main(context.Background(), single, &stdout, &stderr); code != 0 {
				t.Fatalf("single process: exit %d\n%s", code, stderr.String())
			}
			code, out := runMPI(t, append(trainArgs(t, two, common...), "--batch-size", "1"), nil)
			if code != 0 {
				t.Fatalf("mpirun -np 2: exit %d\n%s", code, out)
			}
			if !strings.Contains(out, "data parallel: 2 processes") || strings.Count(out, "done: 4 steps") != 1 {
				t.Errorf("rank 0 alone should report the run:\n%s", out)
			}
			want, got := readMetrics(t, one), readMetrics(t, two)
			if len(got) != len(want) || len(want) != 4 {
				t.Fatalf("%d records from 2 processes, %d from one; want 4", len(got), len(want))
			}
			for i := range want {
				for _, k := range []string{"loss", "grad_norm", "eval_loss", "tokens", "epoch"} {
					w, ok := want[i][k].(float64)
					g, _ := got[i][k].(float64)
					if ok != (got[i][k] != nil) || !closeTo(g, w, 1e-6) {
						t.Errorf("step %v: %s %v with 2 processes, %v with one", want[i]["step"], k, got[i][k], want[i][k])
					}
				}
				if b, _ := got[i]["allreduce_bytes"].(float64); b <= 0 {
					t.Errorf("step %v: no all-reduce bytes logged: %v", got[i]["step"], got[i])
				}
			}
			wantT, gotT := readTensors(t, filepath.Join(one, c.file)), readTensors(t, filepath.Join(two, c.file))
			if len(wantT) == 0 || len(gotT) != len(wantT) {
				t.Fatalf("%s holds %d and %d tensors", c.file, len(gotT), len(wantT))
			}
			for name, w := range wantT {
				g := gotT[name]
				if len(g) != len(w) {
					t.Fatalf("%s: %d values, want %d", name, len(g), len(w))
				}
				for i := range w {
					if math.Abs(float64(g[i]-w[i])) > 1e-6 {
						t.Fatalf("%s[%d] = %g with 2 processes, %g with one", name, i, g[i], w[i])
					}
				}
			}
		})
	}
}

// rankPID finds the process of rank of the job whose arguments mention
// marker (Linux: /proc).
func rankPID(t *testing.T, rank int, marker string) int {
	t.Helper()
	dirs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, path := range dirs {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		vars := "\x00" + string(raw)
		if strings.Contains(vars, fmt.Sprintf("\x00OMPI_COMM_WORLD_RANK=%d\x00", rank)) && strings.Contains(vars, marker) {
			var pid int
			fmt.Sscanf(filepath.Base(filepath.Dir(path)), "%d", &pid)
			return pid
		}
	}
	t.Fatalf("no process of rank %d found", rank)
	return 0
}

// startMPI starts a long job and waits until it has logged a step.
func startMPI(t *testing.T, out string, args []string) (*exec.Cmd, *bytes.Buffer, func() (int, time.Duration)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	cmd, output := mpiJob(t, ctx, args, nil)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for metricsLines(out) < 1 {
		if time.Now().After(deadline) {
			cancel()
			cmd.Wait()
			t.Fatalf("no step logged within 2 minutes:\n%s", output)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wait := func() (int, time.Duration) {
		start := time.Now()
		cmd.Wait()
		return cmd.ProcessState.ExitCode(), time.Since(start)
	}
	return cmd, output, wait
}

// TestTrainMPIInterruptAndResume: SIGTERM to rank 0 stops both processes
// after the step, rank 0 checkpoints, both exit 130; resuming with 2
// processes ends with the adapter of an uninterrupted 2-process run, byte
// for byte (SparseLoRA after the warm-up, each process selecting on its own
// micro-batch).
func TestTrainMPIInterruptAndResume(t *testing.T) {
	const steps = "14"
	full, cut := t.TempDir(), t.TempDir()
	common := []string{"--max-steps", steps, "--log-every", "1", "--batch-size", "1", "--gpu", "0"}
	if code, out := runMPI(t, trainArgs(t, full, common...), nil); code != 0 {
		t.Fatalf("uninterrupted run: exit %d\n%s", code, out)
	}
	if recs := readMetrics(t, full); recs[len(recs)-1]["sparse"] != true {
		t.Fatalf("the run should end sparse: %v", recs[len(recs)-1])
	}
	args := trainArgs(t, cut, common...)
	_, output, wait := startMPI(t, cut, args)
	if err := syscall.Kill(rankPID(t, 0, cut), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, _ := wait()
	if code != ExitInterrupted {
		t.Fatalf("mpirun exit %d after SIGTERM to rank 0, want %d\n%s", code, ExitInterrupted, output)
	}
	if n := strings.Count(output.String(), "sparselora train: interrupted"); n != 2 {
		t.Errorf("%d processes say they were interrupted, want 2:\n%s", n, output)
	}
	checkpoints, _ := filepath.Glob(filepath.Join(cut, "checkpoint-*"))
	if len(checkpoints) != 1 {
		t.Fatalf("checkpoints %v, want one\n%s", checkpoints, output)
	}
	if code, out := runMPI(t, append(args, "--resume"), nil); code != 0 {
		t.Fatalf("resumed run: exit %d\n%s", code, out)
	}
	want, _ := os.ReadFile(filepath.Join(full, "adapter_model.safetensors"))
	got, err := os.ReadFile(filepath.Join(cut, "adapter_model.safetensors"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("the resumed run's adapter differs from the uninterrupted run's (%v)", err)
	}
}

// TestTrainMPIKilledRankEndsJob: a process that dies (SIGKILL) ends the
// job within a minute instead of leaving the other one waiting.
func TestTrainMPIKilledRankEndsJob(t *testing.T) {
	out := t.TempDir()
	_, output, wait := startMPI(t, out, trainArgs(t, out, "--max-steps", "5000", "--log-every", "1", "--batch-size", "1", "--sparsity", "dense", "--gpu", "0"))
	if err := syscall.Kill(rankPID(t, 1, out), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code, took := wait()
	if code == 0 || took > time.Minute {
		t.Fatalf("job exit %d %v after rank 1 was killed, want an error within a minute\n%s", code, took, output)
	}
}

// TestTrainMPIDifferentSettingsRefused: processes started with different
// settings stop at start with an error naming the difference.
func TestTrainMPIDifferentSettingsRefused(t *testing.T) {
	out := t.TempDir()
	args := trainArgs(t, out, "--max-steps", "2", "--batch-size", "1", "--gpu", "0")
	other := append(append([]string(nil), args...), "--lr", "0.02")
	code, output := runMPI(t, args, other)
	if code == 0 || !strings.Contains(output, `setting lr is "0.01" on rank 0, "0.02" here`) {
		t.Fatalf("exit %d, want an error naming lr:\n%s", code, output)
	}
	if metricsLines(out) != 0 {
		t.Errorf("a refused job trained")
	}
}
