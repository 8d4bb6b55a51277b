package app

import (
	"fmt"
	"io"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress returns a progress callback (done of total) for w: a bar redrawn in
// place when w is a terminal, otherwise a plain line such as "SVD estimator:
// 8/20" each time another tenth of the work is done (and at the end), so logs
// and pipes get short, readable lines instead of carriage returns.
func progress(w io.Writer, label string) func(done, total int) {
	return progressFor(w, label, isTerminal(w))
}

func progressFor(w io.Writer, label string, terminal bool) func(done, total int) {
	var bar *progressbar.ProgressBar
	lastTenth := -1
	return func(done, total int) {
		if total <= 0 {
			return
		}
		done = min(max(done, 0), total)
		if terminal {
			if bar == nil {
				bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(label),
					progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
			}
			bar.Set(done)
			return
		}
		tenth := done * 10 / total
		if tenth == lastTenth && done != total {
			return
		}
		lastTenth = tenth
		fmt.Fprintf(w, "%s: %d/%d\n", label, done, total)
	}
}

// isTerminal reports whether w is a terminal, where progress bars may redraw
// a line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
