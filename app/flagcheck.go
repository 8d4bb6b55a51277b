package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Flag checks shared by the commands. Each error names the flag and the value
// given, so a mistyped number is reported before any work starts rather than
// turning into a hang, a huge allocation or a silently different run.

// checkPositive fails unless v > 0.
func checkPositive(flagName string, v int) error {
	if v <= 0 {
		return fmt.Errorf("--%s %d: must be a positive integer", flagName, v)
	}
	return nil
}

// checkRange fails unless lo <= v <= hi; what says what the flag counts.
func checkRange(flagName string, v, lo, hi int, what string) error {
	if v < lo || v > hi {
		return fmt.Errorf("--%s %d: want %s from %d to %d", flagName, v, what, lo, hi)
	}
	return nil
}

// checkOutputPath checks, before any work starts, that a report can be written
// to path: its directory exists and is writable and path is not a directory.
// An empty path means "no report" and passes.
func checkOutputPath(flagName, path string) error {
	if path == "" {
		return nil
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("--%s %s: is a directory, want a file name", flagName, path)
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("--%s %s: directory %s does not exist", flagName, path, dir)
	case err != nil:
		return fmt.Errorf("--%s %s: %w", flagName, path, err)
	case !st.IsDir():
		return fmt.Errorf("--%s %s: %s is not a directory", flagName, path, dir)
	}
	// Writability depends on permissions, ACLs and read-only mounts; creating
	// (and removing) a file is the only reliable test.
	probe, err := os.CreateTemp(dir, ".sparselora-write-check-*")
	if err != nil {
		return fmt.Errorf("--%s %s: cannot write to %s: %w", flagName, path, dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return nil
}
