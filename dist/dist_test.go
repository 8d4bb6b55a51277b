package dist

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary, started by mpirun, run one MPI program
// instead of the tests.
const helperEnv = "SPARSELORA_DIST_HELPER"

func TestMain(m *testing.M) {
	if prog := os.Getenv(helperEnv); prog != "" {
		os.Exit(runHelper(prog))
	}
	os.Exit(m.Run())
}

// Mpirun is how the tests launch several processes (root in CI needs
// --allow-run-as-root; 2 ranks on fewer cores need --oversubscribe).
func Mpirun(t testing.TB, np int, args ...string) *exec.Cmd {
	t.Helper()
	path, err := exec.LookPath("mpirun")
	if err != nil {
		t.Fatalf("mpirun not found (%v): `make setup` installs openmpi-bin on Debian", err)
	}
	all := append([]string{"--allow-run-as-root", "--oversubscribe", "-np", fmt.Sprint(np)}, args...)
	return exec.Command(path, all...)
}

func runHelper(prog string) int {
	c, err := InitFromEnv(Options{Timeout: 5 * time.Second, OnHang: func(op string, waited time.Duration) {
		fmt.Fprintf(os.Stderr, "watchdog: %s waited %v\n", op, waited)
	}})
	if err != nil || c == nil {
		fmt.Fprintln(os.Stderr, "init:", err, c == nil)
		return 3
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "rank %d: "+format+"\n", append([]any{c.Rank()}, a...)...)
		return 1
	}
	switch prog {
	case "collectives":
		r, n := c.Rank(), c.Size()
		f := []float32{float32(r) + 0.5, float32(-r), float32(math.NaN())}
		if r != 0 {
			f[2] = 1
		}
		if err := c.SumFloat32(f); err != nil {
			return fail("%v", err)
		}
		want := float32(n*(n-1)/2) + 0.5*float32(n)
		if f[0] != want || f[1] != -float32(n*(n-1)/2) || !math.IsNaN(float64(f[2])) {
			return fail("float32 sum %v, want %v", f, want)
		}
		d := []float64{float64(r) * 1e-300, 1}
		if err := c.SumFloat64(d); err != nil {
			return fail("%v", err)
		}
		if d[1] != float64(n) || d[0] != float64(n*(n-1)/2)*1e-300 {
			return fail("float64 sum %v", d)
		}
		for _, tc := range []struct {
			op   Op
			want int64
		}{{Sum, int64(n*(n-1)/2) << 40}, {Max, int64(n-1) << 40}, {Min, 0}} {
			v := []int64{int64(r) << 40}
			if err := c.ReduceInt64(v, tc.op); err != nil {
				return fail("%v", err)
			}
			if v[0] != tc.want {
				return fail("int64 op %d: %d, want %d", tc.op, v[0], tc.want)
			}
		}
		msg := []byte(fmt.Sprintf("from rank %d", r))
		got, err := c.BroadcastBytes(msg, n-1)
		if err != nil {
			return fail("%v", err)
		}
		if string(got) != fmt.Sprintf("from rank %d", n-1) {
			return fail("broadcast %q", got)
		}
		if err := c.Barrier(); err != nil {
			return fail("%v", err)
		}
		if err := c.Finalize(); err != nil {
			return fail("%v", err)
		}
		fmt.Printf("rank %d ok\n", r)
		return 0
	case "hang":
		// Rank 1 never joins the barrier: the watchdog must end the job.
		if c.Rank() == 1 {
			time.Sleep(time.Minute)
			return 0
		}
		_ = c.Barrier()
		return 0
	}
	return fail("unknown helper %q", prog)
}

func TestCollectivesTwoRanks(t *testing.T) {
	cmd := Mpirun(t, 2, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=collectives")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
	for _, want := range []string{"rank 0 ok", "rank 1 ok"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("no %q in:\n%s", want, out)
		}
	}
}

func TestWatchdogEndsHungJob(t *testing.T) {
	cmd := Mpirun(t, 2, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=hang")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err == nil {
		t.Fatalf("a hung job exited 0:\n%s", out)
	}
	if took > 45*time.Second || !strings.Contains(string(out), "watchdog: MPI_Ibarrier waited") {
		t.Fatalf("job ended after %v (want the 5 s watchdog to end it):\n%s", took, out)
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv("OMPI_COMM_WORLD_SIZE", "")
	if _, ok, err := FromEnv(); ok || err != nil {
		t.Fatalf("no mpirun: ok %v, err %v", ok, err)
	}
	t.Setenv("OMPI_COMM_WORLD_SIZE", "2")
	t.Setenv("OMPI_COMM_WORLD_RANK", "1")
	t.Setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
	if l, ok, err := FromEnv(); !ok || err != nil || l != (Launch{Rank: 1, Size: 2, LocalRank: 1}) {
		t.Fatalf("got %+v %v %v", l, ok, err)
	}
	t.Setenv("OMPI_COMM_WORLD_RANK", "2")
	if _, _, err := FromEnv(); err == nil {
		t.Fatal("rank 2 of 2 accepted")
	}
}

func TestMissingLibraryIsNamed(t *testing.T) {
	t.Setenv("OMPI_COMM_WORLD_SIZE", "2")
	t.Setenv("OMPI_COMM_WORLD_RANK", "0")
	t.Setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
	t.Setenv(LibraryEnv, "/nonexistent/libmpi.so.40")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLoadHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "SPARSELORA_DIST_LOAD=1")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "/nonexistent/libmpi.so.40") || !strings.Contains(string(out), "launched by mpirun") {
		t.Fatalf("error does not name the library and mpirun:\n%s", out)
	}
}

// TestLoadHelper runs in a child process (libmpi loads once per process).
func TestLoadHelper(t *testing.T) {
	if os.Getenv("SPARSELORA_DIST_LOAD") == "" {
		return
	}
	_, err := InitFromEnv(Options{})
	t.Log(err)
	if err == nil {
		t.Fatal("no error")
	}
}
