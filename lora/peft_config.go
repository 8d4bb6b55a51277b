// This file reads and validates a PEFT adapter without a device: the
// adapter_config.json fields that decide which modules are adapted
// (target_modules, layers_to_transform) and the weight file's keys, checked
// against them. What sparselora cannot honour is rejected by field name rather
// than loaded as something else.

package lora

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/model"
)

// AdapterConfig is adapter_config.json as Load understands it.
type AdapterConfig struct {
	// Config holds the rank, alpha, rsLoRA switch, base model and the
	// projections target_modules names (in model.Projections order).
	Config
	// Layers is layers_to_transform, sorted: the only decoder layers PEFT
	// adapts. Nil means every layer.
	Layers []int
}

// maxAdapterRank bounds r: far above any useful LoRA rank (which is at most
// the hidden size) and small enough that rank x width products stay in int.
const maxAdapterRank = 1 << 16

// unsupportedOptions are PEFT LoraConfig fields that change which modules
// are adapted or what they compute, with what sparselora would have to do to
// honour them. Each must be absent, null, false or empty.
var unsupportedOptions = map[string]string{
	"exclude_modules":         "excluded modules",
	"layer_replication":       "layer replication",
	"lora_bias":               "a bias on lora_B",
	"use_qalora":              "QA-LoRA",
	"target_parameters":       "LoRA on parameters rather than modules",
	"trainable_token_indices": "trainable token embeddings",
	"alora_invocation_tokens": "activated LoRA",
	"megatron_config":         "Megatron layers",
	"layers_pattern":          "a custom layers_pattern",
}

// ParseAdapterConfig parses and validates the contents of an
// adapter_config.json; path names the file in errors.
func ParseAdapterConfig(raw []byte, path string) (*AdapterConfig, error) {
	var pc peftConfig
	if err := json.Unmarshal(raw, &pc); err != nil {
		return nil, fmt.Errorf("%s: malformed JSON: %w", path, err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%s: malformed JSON: want an object", path)
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%s: field %q: "+format, append([]any{path, field}, args...)...)
	}
	switch {
	case pc.PeftType != "LORA":
		return nil, bad("peft_type", "%q is not supported (want LORA)", pc.PeftType)
	case pc.TaskType != "" && pc.TaskType != "CAUSAL_LM":
		return nil, bad("task_type", "%q is not supported (want CAUSAL_LM)", pc.TaskType)
	case pc.R <= 0 || pc.R > maxAdapterRank:
		return nil, bad("r", "want a rank from 1 to %d, got %d", maxAdapterRank, pc.R)
	case pc.LoraAlpha == 0:
		return nil, bad("lora_alpha", "must be non-zero")
	case pc.UseDoRA:
		return nil, bad("use_dora", "DoRA is not supported")
	case pc.FanInFanOut:
		return nil, bad("fan_in_fan_out", "must be false for LLaMA-family models")
	case pc.Bias != "" && pc.Bias != "none":
		return nil, bad("bias", "%q is not supported (want none)", pc.Bias)
	case len(pc.RankPattern) > 0:
		return nil, bad("rank_pattern", "per-module ranks are not supported")
	case len(pc.AlphaPattern) > 0:
		return nil, bad("alpha_pattern", "per-module alphas are not supported")
	case len(pc.ModulesToSave) > 0:
		return nil, bad("modules_to_save", "fully trained modules are not supported")
	}
	for _, field := range slices.Sorted(maps.Keys(unsupportedOptions)) {
		if raw, ok := fields[field]; ok && !emptyJSON(raw) {
			if field == "layers_pattern" && (string(raw) == `"layers"` || string(raw) == `["layers"]`) {
				continue // PEFT's default for LLaMA-family models
			}
			return nil, bad(field, "%s is not supported (got %s)", unsupportedOptions[field], raw)
		}
	}
	c := &AdapterConfig{Config: Config{Rank: pc.R, Alpha: pc.LoraAlpha, RSLoRA: pc.UseRSLoRA}}
	if pc.BaseModel != nil {
		c.BaseModel = *pc.BaseModel
	}
	targets, err := parseTargetModules(pc.TargetModules)
	if err != nil {
		return nil, bad("target_modules", "%v", err)
	}
	c.Targets = targets
	if c.Layers, err = parseLayersToTransform(fields["layers_to_transform"]); err != nil {
		return nil, bad("layers_to_transform", "%v", err)
	}
	return c, nil
}

// emptyJSON reports whether a JSON value is null, false, "", [] or {}.
func emptyJSON(raw json.RawMessage) bool {
	switch string(bytes.TrimSpace(raw)) {
	case "null", "false", `""`, "[]", "{}":
		return true
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch v := v.(type) {
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// parseTargetModules reads target_modules: a list of module names, each a
// projection name ("q_proj") or its path inside a layer ("self_attn.q_proj"),
// as PEFT matches them by suffix; or "all-linear", which for a causal LM is
// every projection of the decoder layers. A regular expression would have to
// be evaluated with Python's re; it is rejected rather than guessed at.
func parseTargetModules(raw json.RawMessage) ([]model.Projection, error) {
	if emptyJSON(raw) {
		return nil, errors.New("missing: list the adapted modules, e.g. [\"q_proj\", \"v_proj\"]")
	}
	var names []string
	var single string
	if err := json.Unmarshal(raw, &single); err == nil {
		if single != "all-linear" {
			return nil, fmt.Errorf("%q: a regular expression is not supported; list the module names instead", single)
		}
		return slices.Clone(model.Projections), nil
	}
	if err := json.Unmarshal(raw, &names); err != nil {
		return nil, fmt.Errorf("want a list of module names, got %s", raw)
	}
	chosen := map[model.Projection]bool{}
	for _, name := range names {
		p, ok := projectionNamed(name)
		if !ok {
			return nil, fmt.Errorf("%q is not a decoder-layer projection (want q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj; per-layer names are not supported, use layers_to_transform)", name)
		}
		chosen[p] = true
	}
	var out []model.Projection
	for _, p := range model.Projections {
		if chosen[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// projectionNamed resolves a target_modules entry.
func projectionNamed(name string) (model.Projection, bool) {
	for _, p := range model.Projections {
		if name == p.String() || name == p.Module()+"."+p.String() {
			return p, true
		}
	}
	return 0, false
}

// parseLayersToTransform reads layers_to_transform: null, one index or a
// list of indices.
func parseLayersToTransform(raw json.RawMessage) ([]int, error) {
	if len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	var one int
	if err := json.Unmarshal(raw, &one); err == nil {
		raw = json.RawMessage(fmt.Sprintf("[%d]", one))
	}
	var layers []int
	if err := json.Unmarshal(raw, &layers); err != nil {
		return nil, fmt.Errorf("want a layer index or a list of them, got %s", raw)
	}
	if len(layers) == 0 {
		return nil, errors.New("empty list: no layer would be adapted")
	}
	seen := map[int]bool{}
	for _, l := range layers {
		if l < 0 || l >= model.MaxLayers {
			return nil, fmt.Errorf("layer %d is not a layer index (0 to %d)", l, model.MaxLayers-1)
		}
		if seen[l] {
			return nil, fmt.Errorf("layer %d is listed twice", l)
		}
		seen[l] = true
	}
	slices.Sort(layers)
	return layers, nil
}

// adapterTensors names the two weight tensors of one adapted projection.
type adapterTensors struct{ A, B string }

// matchWeights checks the weight file's tensor names against the config and
// a model of numLayers layers, and pairs each projection's lora_A with its
// lora_B. Every key must parse, lie in an existing layer that
// layers_to_transform allows and adapt a projection target_modules lists;
// every targeted projection of every allowed layer must have both tensors,
// and neither may come without the other.
func (c *AdapterConfig) matchWeights(names []string, numLayers int, source string) (map[Key]adapterTensors, error) {
	for _, l := range c.Layers {
		if l >= numLayers {
			return nil, fmt.Errorf("%s: layers_to_transform lists layer %d, but the model has %d layers", source, l, numLayers)
		}
	}
	found := map[Key]adapterTensors{}
	for _, name := range names {
		k, part, err := parsePEFTKey(name, numLayers)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", source, name, err)
		}
		if !slices.Contains(c.Targets, k.Proj) {
			return nil, fmt.Errorf("%s: tensor %s adapts %s, which target_modules does not list (it lists %s)", source, name, k.Proj, projectionList(c.Targets))
		}
		if c.Layers != nil && !slices.Contains(c.Layers, k.Layer) {
			return nil, fmt.Errorf("%s: tensor %s adapts layer %d, which layers_to_transform %v excludes", source, name, k.Layer, c.Layers)
		}
		t := found[k]
		slot := &t.A
		if part == "lora_B" {
			slot = &t.B
		}
		if *slot != "" {
			return nil, fmt.Errorf("%s: tensors %s and %s are the same %s weight", source, *slot, name, part)
		}
		*slot = name
		found[k] = t
	}
	for k, t := range found {
		switch {
		case t.B == "":
			return nil, fmt.Errorf("%s: tensor %s has no matching lora_B (%s.lora_B.weight)", source, t.A, k.PEFTName())
		case t.A == "":
			return nil, fmt.Errorf("%s: tensor %s has no matching lora_A (%s.lora_A.weight)", source, t.B, k.PEFTName())
		}
	}
	for layer := range numLayers {
		if c.Layers != nil && !slices.Contains(c.Layers, layer) {
			continue
		}
		for _, p := range c.Targets {
			if _, ok := found[Key{layer, p}]; !ok {
				return nil, fmt.Errorf("%s: no weights for %s, which target_modules and layers_to_transform select (want %s.lora_A.weight and .lora_B.weight)",
					source, Key{layer, p}.PEFTName(), Key{layer, p}.PEFTName())
			}
		}
	}
	return found, nil
}

func projectionList(ps []model.Projection) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.String()
	}
	return strings.Join(names, ", ")
}

// parsePEFTKey splits
// base_model.model.model.layers.{i}.{module}.{proj}.lora_{A|B}[.default].weight.
func parsePEFTKey(name string, layers int) (Key, string, error) {
	rest, found := strings.CutPrefix(name, "base_model.model.model.layers.")
	if !found {
		return Key{}, "", errors.New("not a PEFT LoRA key of a decoder layer (want base_model.model.model.layers.N.…)")
	}
	withoutWeight, found := strings.CutSuffix(rest, ".weight")
	if !found {
		return Key{}, "", errors.New("not a LoRA weight (want a name ending in .weight)")
	}
	parts := strings.Split(strings.TrimSuffix(withoutWeight, ".default"), ".")
	if len(parts) != 4 {
		return Key{}, "", errors.New("unexpected PEFT key layout (want base_model.model.model.layers.N.MODULE.PROJ.lora_A.weight)")
	}
	layer, err := strconv.Atoi(parts[0])
	if err != nil || layer < 0 || layer >= layers || parts[0] != strconv.Itoa(layer) {
		return Key{}, "", fmt.Errorf("layer %q is not one of the model's %d layers", parts[0], layers)
	}
	for _, p := range model.Projections {
		if parts[1] == p.Module() && parts[2] == p.String() {
			if parts[3] != "lora_A" && parts[3] != "lora_B" {
				return Key{}, "", fmt.Errorf("unknown LoRA part %q", parts[3])
			}
			return Key{layer, p}, parts[3], nil
		}
	}
	return Key{}, "", fmt.Errorf("unknown module %s.%s", parts[1], parts[2])
}
