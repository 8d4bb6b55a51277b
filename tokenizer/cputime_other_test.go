//go:build !unix

package tokenizer

import "time"

func processCPUTime() (time.Duration, bool) { return 0, false }
