package lora

import (
	"fmt"
	"strings"

	"github.com/sparselora/sparselora/model"
)

// ParseTargets reads LoRA target modules in either spelling: the short names
// q,k,v,o,gate,up,down or PEFT's q_proj,...,down_proj, and "all".
func ParseTargets(s string) ([]model.Projection, error) {
	if strings.TrimSpace(s) == "all" || strings.TrimSpace(s) == "all-linear" {
		return model.Projections, nil
	}
	byName := map[string]model.Projection{}
	for _, p := range model.Projections {
		byName[p.String()] = p
		byName[strings.TrimSuffix(p.String(), "_proj")] = p
	}
	var out []model.Projection
	for _, t := range strings.Split(s, ",") {
		p, ok := byName[strings.TrimSpace(t)]
		if !ok {
			return nil, fmt.Errorf("--targets: unknown module %q (want q,k,v,o,gate,up,down or q_proj,...,down_proj)", t)
		}
		for _, seen := range out {
			if seen == p {
				return nil, fmt.Errorf("--targets: %s listed twice", p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
