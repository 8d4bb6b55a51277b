// This file chooses how estimator progress is shown: a bar redrawn in place
// on a terminal, plain lines elsewhere (a log file, a pipe, CI), where
// carriage returns would pile up into one unreadable line.

package predictor

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// Progress returns a progress callback (for EstimateOptions.Progress) for w:
// ProgressBar's in-place bar when w is a terminal, otherwise a plain line
// such as "SVD factors: 8/20" each time another tenth of the work is done
// (and at the end), so logs stay readable and short.
func Progress(w io.Writer, label string, width int) func(done, total int) {
	return progressFor(w, label, width, isTerminal(w))
}

func progressFor(w io.Writer, label string, width int, terminal bool) func(done, total int) {
	if terminal {
		return ProgressBar(w, label, width)
	}
	lastTenth := -1
	return func(done, total int) {
		if total <= 0 {
			return
		}
		done = min(max(done, 0), total)
		tenth := done * 10 / total
		if tenth == lastTenth && done != total {
			return
		}
		lastTenth = tenth
		fmt.Fprintf(w, "%s: %d/%d\n", label, done, total)
	}
}

// isTerminal reports whether w is a file open on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
