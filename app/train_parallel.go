package app

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/sparselora/sparselora/dist"
	"github.com/sparselora/sparselora/train"
)

// trainGroup is this process's part in a data-parallel `mpirun -np N
// sparselora train` (SPEC.md section 12).
type trainGroup struct {
	comm   *dist.Comm
	stderr io.Writer
}

// errStoppedWithJob ends a process of an mpirun job that another process's
// interrupt stopped (exit code 130, as for its own).
var errStoppedWithJob = errors.New("another process of the job was interrupted")

// joinTrainGroup initialises MPI when mpirun started this process as one of
// several; it returns nil for a plain run. Unless --gpu chose one, each
// process takes the adapter of its index on its host.
func joinTrainGroup(timeout time.Duration, df *deviceFlags, stderr io.Writer) (*trainGroup, error) {
	var g *trainGroup
	comm, err := dist.InitFromEnv(dist.Options{Timeout: timeout, OnHang: func(op string, waited time.Duration) {
		fmt.Fprintf(stderr, "sparselora train: rank %d: %s waited %s for the other processes (--mpi-timeout): ending the job\n",
			g.comm.Rank(), op, waited.Round(time.Second))
	}})
	if err != nil || comm == nil {
		return nil, err
	}
	g = &trainGroup{comm: comm, stderr: stderr}
	if df.adapter == "" {
		df.adapter = strconv.Itoa(comm.LocalRank())
	}
	return g, nil
}

// lead reports whether this process writes the run directory and talks.
func (g *trainGroup) lead() bool { return g == nil || g.comm.Rank() == 0 }

// openDeviceError names the process's adapter choice when it fails.
func (g *trainGroup) openDeviceError(df *deviceFlags, err error) error {
	if g == nil {
		return err
	}
	return fmt.Errorf("rank %d (local rank %d) opens adapter %s: %w (each process on a host takes the adapter of its local rank; choose one with --gpu)",
		g.comm.Rank(), g.comm.LocalRank(), df.adapter, err)
}

// leave ends this process's part once training returned err. An error
// aborts every process of the job, after printing it with this rank's
// index (the other processes' messages may be missing: MPI_Abort kills
// them). Otherwise every process waits for the others (rank 0 may still be
// writing a checkpoint or the adapter) and finalizes MPI.
func (g *trainGroup) leave(err error) error {
	if g == nil {
		return err
	}
	if err != nil && !errors.Is(err, train.ErrInterrupted) && !errors.Is(err, errUsage) {
		fmt.Fprintf(g.stderr, "sparselora train: rank %d of %d: %v\n", g.comm.Rank(), g.comm.Size(), err)
		g.comm.Abort(1)
		return err
	}
	if berr := g.comm.Barrier(); berr != nil && err == nil {
		err = berr
	}
	if ferr := g.comm.Finalize(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}
