package train

import (
	"fmt"

	"github.com/sparselora/sparselora/model"
)

// rankWarning warns when a LoRA rank exceeds the smaller side of a target
// projection: B·A of an out×in weight has rank at most min(in, out), so the
// extra rank only adds parameters (the trainable share can pass 100 %).
// shape gives a projection's (in, out).
func rankWarning(rank int, targets []model.Projection, shape func(model.Projection) (in, out int)) string {
	for _, p := range targets {
		in, out := shape(p)
		if side := min(in, out); rank > side {
			return fmt.Sprintf("--rank %d exceeds %d, the smaller side of %s (%dx%d): a rank above it adds parameters but nothing the adapter can learn (try --rank %d or less)",
				rank, side, p, out, in, side)
		}
	}
	return ""
}
