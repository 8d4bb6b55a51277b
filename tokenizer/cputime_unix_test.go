//go:build unix

package tokenizer

import (
	"syscall"
	"time"
)

// processCPUTime is the user+system CPU time of this process, so the benchmark can report
// throughput per CPU-second, which stays meaningful on a loaded machine.
func processCPUTime() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
