// This file reads SparseLoRA sparsity configuration files (SPEC 4.7, 4.8): the
// YAML format of the reference implementation (z-lab/sparselora
// configs/sparsity/*.yaml), strictly validated, and the tables shipped in
// configs/sparsity.

package predictor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sparselora/sparselora/configs/sparsity"
	"github.com/sparselora/sparselora/model"
)

// LayerSparsity is the fraction of channels dropped in one decoder layer, each
// in [0, 1): MLP for the FFN's intermediate channels (the reference's
// layers.N.mlp), Attention for the kv channels of q/k/v/o (layers.N.self_attn).
type LayerSparsity struct {
	MLP, Attention float64
}

// KeptMLPChannels is how many of the n intermediate channels the frozen
// gate/up/down projections keep on context tokens (SPEC 4.4).
func (s LayerSparsity) KeptMLPChannels(n int) int { return keptChannels(n, s.MLP) }

// KeptAttentionChannels is how many of the n = NumKeyValueHeads*HeadDim kv
// channels K and V keep on context tokens (SPEC 4.3, 4.4); Q and o_proj's input
// keep NumAttentionHeads/NumKeyValueHeads times as many.
func (s LayerSparsity) KeptAttentionChannels(n int) int { return keptChannels(n, s.Attention) }

// keptChannels is SPEC 4.4's k = max(1, floor(n (1 - s) + 1e-6)); the epsilon
// keeps e.g. n=160, s=0.9 at 16 where float rounding would give 15. With s = 0
// every channel is kept.
func keptChannels(n int, s float64) int {
	if s <= 0 {
		return n
	}
	return min(n, max(1, int(math.Floor(float64(n)*(1-s)+1e-6))))
}

// SparsityConfig is one parsed sparsity configuration file.
type SparsityConfig struct {
	// Source names the file in errors: its path, or "configs/sparsity/NAME.yaml"
	// for a built-in table.
	Source string
	// StartStep is start_step: <= 1 a fraction of the total optimizer steps,
	// > 1 an absolute step (see StartStepFor). Absent means 0.
	StartStep float64
	// Mode is the mode string as written: "dense" or "svd_<r>".
	Mode string
	// Rank is the SVD estimator's rank r of svd_<r>; 0 in dense mode.
	Rank int
	// Dense is true for mode dense: no predictor runs and no channel is dropped.
	Dense bool
	// SkipOutputTokens is skip_output_tokens: scored tokens run dense (SPEC
	// 4.5). When false, the reference sparsifies every real token.
	SkipOutputTokens bool
	// Layers holds every layer the file lists (zeros included); a layer not
	// listed is dense. Use Layer to read it.
	Layers map[int]LayerSparsity

	// layerLines is the YAML line of each layer's first key, so Validate can
	// point at the entry that does not fit the model.
	layerLines map[int]int
}

// Config keys of the format.
const (
	keyStartStep        = "start_step"
	keyMode             = "mode"
	keySkipOutputTokens = "skip_output_tokens"
	keySparsity         = "sparsity"
	// The reference's own files also carry human-readable summaries such as
	// ffn_sparsity: "ffn=0.99x28"; its code never reads them, so neither do we,
	// but we accept them so that its files load unchanged.
	keyFFNSummary  = "ffn_sparsity"
	keyQKVOSummary = "qkvo_sparsity"
)

var topLevelKeys = []string{keyStartStep, keyMode, keySkipOutputTokens, keySparsity, keyFFNSummary, keyQKVOSummary}

// Layer-entry kinds of the sparsity mapping (the HF module under a layer).
const (
	kindMLP       = "mlp"
	kindAttention = "self_attn"
)

const (
	modeDense     = "dense"
	modeSVDPrefix = "svd_"
)

// LoadSparsityConfig reads and validates a sparsity configuration file.
func LoadSparsityConfig(path string) (*SparsityConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("predictor: reading sparsity config: %w", err)
	}
	return ParseSparsityConfig(data, path)
}

// BuiltinSparsityConfig returns one of the shipped tables by name, e.g.
// "llama3-8b-math10k" or "dense" (BuiltinSparsityConfigNames lists them).
func BuiltinSparsityConfig(name string) (*SparsityConfig, error) {
	if !slices.Contains(BuiltinSparsityConfigNames(), name) {
		return nil, fmt.Errorf("predictor: no built-in sparsity config %q (have %s)", name, strings.Join(BuiltinSparsityConfigNames(), ", "))
	}
	data, err := fs.ReadFile(sparsity.Files, name+".yaml")
	if err != nil {
		return nil, fmt.Errorf("predictor: built-in sparsity config %q: %w", name, err)
	}
	return ParseSparsityConfig(data, "configs/sparsity/"+name+".yaml")
}

// BuiltinSparsityConfigNames lists the shipped tables' names (file names
// without .yaml), sorted.
func BuiltinSparsityConfigNames() []string {
	// Glob fails only on a malformed pattern, and this one is constant.
	files, _ := fs.Glob(sparsity.Files, "*.yaml")
	names := make([]string, len(files))
	for i, file := range files {
		names[i] = strings.TrimSuffix(file, ".yaml")
	}
	slices.Sort(names)
	return names
}

// OpenSparsityConfig resolves what a user typed after a --sparsity flag: a
// path when it names a .yaml/.yml file or contains a path separator, else a
// built-in name.
func OpenSparsityConfig(nameOrPath string) (*SparsityConfig, error) {
	ext := path.Ext(nameOrPath)
	if ext == ".yaml" || ext == ".yml" || strings.ContainsAny(nameOrPath, `/\`) {
		return LoadSparsityConfig(nameOrPath)
	}
	return BuiltinSparsityConfig(nameOrPath)
}

// ParseSparsityConfig parses the contents of a sparsity configuration file;
// source names the file in errors. Unknown keys, duplicate keys, malformed
// layer entries, sparsities outside [0, 1), a bad mode and a negative
// start_step are errors that name the file, the line and the key.
func ParseSparsityConfig(data []byte, source string) (*SparsityConfig, error) {
	p := configParser{source: source}
	doc, err := p.decodeSingleDocument(data)
	if err != nil {
		return nil, err
	}
	return p.parseTop(doc)
}

// Layer returns layer i's sparsity; a layer the file does not list is dense.
func (c *SparsityConfig) Layer(i int) LayerSparsity { return c.Layers[i] }

// HasSparseLayers reports whether any layer drops channels; dense mode never
// does.
func (c *SparsityConfig) HasSparseLayers() bool {
	if c.Dense {
		return false
	}
	for _, s := range c.Layers {
		if s.MLP > 0 || s.Attention > 0 {
			return true
		}
	}
	return false
}

// StartStepFor returns the first optimizer step, counted from 0, that runs
// sparse in a run of totalSteps steps (SPEC 4.7); steps before it run dense
// and skip the predictor. It reproduces the reference's callback, which
// enables sparsity when start <= global_step with start = start_step *
// max_steps for start_step <= 1 and start = start_step otherwise, compared as
// floats: the first such step is the ceiling of start, computed with the same
// float64 product (so 0.05 of 1000 steps is step 50, and of 1010 steps step
// 51, where int() truncation would give 50). start_step 1 thus never turns
// sparsity on, and 0 turns it on from the first step.
func (c *SparsityConfig) StartStepFor(totalSteps int) int {
	totalSteps = max(totalSteps, 0)
	start := c.StartStep
	if start <= 1 {
		start *= float64(totalSteps)
	}
	first := math.Ceil(start)
	if first >= math.MaxInt32 {
		// Far beyond any run; saturating avoids int conversion overflow.
		return math.MaxInt32
	}
	return int(first)
}

// SparseAtStep reports whether step (counted from 0) of a run of totalSteps
// runs the predictor and the sparse path: not in dense mode, not with an
// all-dense table, and not before StartStepFor.
func (c *SparsityConfig) SparseAtStep(step, totalSteps int) bool {
	return c.HasSparseLayers() && step >= c.StartStepFor(totalSteps)
}

// SelectorAt is the selector a trainer sets on its workspace for step (counted
// from 0) of totalSteps: sel from the start step on, nil (dense, and the
// predictor skipped) during the warm-up before it (SPEC 4.7).
func (c *SparsityConfig) SelectorAt(sel model.ChannelSelector, step, totalSteps int) model.ChannelSelector {
	if sel == nil || !c.SparseAtStep(step, totalSteps) {
		return nil
	}
	return sel
}

// Validate checks the config fits a model: every listed layer exists, and the
// estimator's rank is no larger than the smallest estimated matrix (k_proj's
// [NumKeyValueHeads*HeadDim, HiddenSize]).
func (c *SparsityConfig) Validate(cfg *model.Config) error {
	if cfg == nil {
		return fmt.Errorf("predictor: %s: validating against a model: no model config", c.Source)
	}
	for _, layer := range slices.Sorted(maps.Keys(c.Layers)) {
		if layer >= cfg.NumHiddenLayers {
			return fmt.Errorf("predictor: %s:%d: key %q: layer %d does not exist: the model (%s) has %d layers",
				c.Source, c.layerLines[layer], keySparsity, layer, modelName(cfg), cfg.NumHiddenLayers)
		}
	}
	if c.HasSparseLayers() {
		smallest := min(cfg.HiddenSize, cfg.NumKeyValueHeads*cfg.HeadDim, cfg.IntermediateSize)
		if c.Rank > smallest {
			return fmt.Errorf("predictor: %s: key %q: rank %d exceeds the smallest estimated matrix dimension %d of the model (%s)",
				c.Source, keyMode, c.Rank, smallest, modelName(cfg))
		}
	}
	return nil
}

func modelName(cfg *model.Config) string {
	if cfg.Path != "" {
		return cfg.Path
	}
	return "config without a path"
}

// configParser walks the YAML node tree so that every error can name the
// file, the line and the key.
type configParser struct {
	source string
}

func (p configParser) errorAt(line int, key, format string, args ...any) error {
	where := p.source
	if line > 0 {
		where = fmt.Sprintf("%s:%d", p.source, line)
	}
	if key == "" {
		return fmt.Errorf("predictor: %s: "+format, append([]any{where}, args...)...)
	}
	return fmt.Errorf("predictor: %s: key %q: "+format, append([]any{where, key}, args...)...)
}

// decodeSingleDocument parses the YAML and insists on exactly one document
// holding a mapping.
func (p configParser) decodeSingleDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, p.errorAt(0, "", "empty sparsity config")
		}
		return nil, p.errorAt(0, "", "malformed YAML: %v", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, p.errorAt(0, "", "malformed YAML: %v", err)
		}
		return nil, p.errorAt(extra.Line, "", "more than one YAML document")
	}
	top := &doc
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	if top.Kind != yaml.MappingNode {
		return nil, p.errorAt(top.Line, "", "want a mapping of %s at the top level", strings.Join(topLevelKeys, ", "))
	}
	return top, nil
}

// mappingEntry is one key/value pair of a YAML mapping.
type mappingEntry struct {
	key   string
	line  int
	value *yaml.Node
}

// entries lists a mapping's pairs, rejecting non-string and duplicate keys
// (yaml.v3 reports duplicates only when decoding into Go maps and structs).
func (p configParser) entries(mapping *yaml.Node, where string) ([]mappingEntry, error) {
	seen := make(map[string]int, len(mapping.Content)/2)
	out := make([]mappingEntry, 0, len(mapping.Content)/2)
	for i := 0; i+1 < len(mapping.Content); i += 2 {
		k, v := resolveAlias(mapping.Content[i]), resolveAlias(mapping.Content[i+1])
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			return nil, p.errorAt(k.Line, where, "keys must be strings, got %q", k.Value)
		}
		if first, dup := seen[k.Value]; dup {
			return nil, p.errorAt(k.Line, k.Value, "duplicate key (first at line %d)", first)
		}
		seen[k.Value] = k.Line
		out = append(out, mappingEntry{key: k.Value, line: k.Line, value: v})
	}
	return out, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func (p configParser) parseTop(top *yaml.Node) (*SparsityConfig, error) {
	entries, err := p.entries(top, "")
	if err != nil {
		return nil, err
	}
	c := &SparsityConfig{Source: p.source, Layers: map[int]LayerSparsity{}, layerLines: map[int]int{}}
	var sawMode, sawSparsity bool
	sparsityLine := 0
	for _, e := range entries {
		switch e.key {
		case keyStartStep:
			if c.StartStep, err = p.number(e); err != nil {
				return nil, err
			}
			if c.StartStep < 0 {
				return nil, p.errorAt(e.line, e.key, "must not be negative, got %g", c.StartStep)
			}
		case keyMode:
			sawMode = true
			if err := p.parseMode(e, c); err != nil {
				return nil, err
			}
		case keySkipOutputTokens:
			if c.SkipOutputTokens, err = p.boolean(e); err != nil {
				return nil, err
			}
		case keySparsity:
			sawSparsity, sparsityLine = true, e.line
			if err := p.parseLayers(e, c); err != nil {
				return nil, err
			}
		case keyFFNSummary, keyQKVOSummary:
			if e.value.Kind != yaml.ScalarNode {
				return nil, p.errorAt(e.line, e.key, "want a summary string")
			}
		default:
			return nil, p.errorAt(e.line, e.key, "unknown key (want %s)", strings.Join(topLevelKeys, ", "))
		}
	}
	if !sawMode {
		return nil, p.errorAt(0, keyMode, "missing (want %q or %q)", modeDense, modeSVDPrefix+"<rank>")
	}
	if !sawSparsity {
		return nil, p.errorAt(0, keySparsity, "missing (use {} for none)")
	}
	if c.Dense {
		// A dense file that lists sparsities contradicts itself; the reference
		// would silently ignore them, so say which one is meant.
		for _, layer := range slices.Sorted(maps.Keys(c.Layers)) {
			if s := c.Layers[layer]; s.MLP > 0 || s.Attention > 0 {
				return nil, p.errorAt(sparsityLine, keySparsity, "mode %q but layer %d has sparsity %+v; use %s<rank> or set it to 0", modeDense, layer, s, modeSVDPrefix)
			}
		}
	}
	return c, nil
}

func (p configParser) parseMode(e mappingEntry, c *SparsityConfig) error {
	if e.value.Kind != yaml.ScalarNode || e.value.ShortTag() != "!!str" {
		return p.errorAt(e.line, e.key, "want %q or %q, got %q", modeDense, modeSVDPrefix+"<rank>", e.value.Value)
	}
	c.Mode = e.value.Value
	if c.Mode == modeDense {
		c.Dense = true
		return nil
	}
	digits, ok := strings.CutPrefix(c.Mode, modeSVDPrefix)
	rank, err := strconv.Atoi(digits)
	if !ok || err != nil || rank < 1 || digits != strconv.Itoa(rank) {
		return p.errorAt(e.line, e.key, "want %q or %q with a positive rank such as svd_8, got %q", modeDense, modeSVDPrefix+"<rank>", c.Mode)
	}
	c.Rank = rank
	return nil
}

// parseLayers reads the sparsity mapping; null or {} means no layer is listed.
func (p configParser) parseLayers(e mappingEntry, c *SparsityConfig) error {
	if e.value.Kind == yaml.ScalarNode && e.value.ShortTag() == "!!null" {
		return nil
	}
	if e.value.Kind != yaml.MappingNode {
		return p.errorAt(e.line, e.key, "want a mapping of layers.N.mlp / layers.N.self_attn to a sparsity")
	}
	entries, err := p.entries(e.value, keySparsity)
	if err != nil {
		return err
	}
	for _, entry := range entries {
		layer, kind, err := p.layerKey(entry)
		if err != nil {
			return err
		}
		s, err := p.number(entry)
		if err != nil {
			return err
		}
		if !(s >= 0 && s < 1) {
			return p.errorAt(entry.line, entry.key, "sparsity must be in [0, 1) (the fraction of channels dropped), got %g", s)
		}
		ls := c.Layers[layer]
		if kind == kindMLP {
			ls.MLP = s
		} else {
			ls.Attention = s
		}
		c.Layers[layer] = ls
		if _, seen := c.layerLines[layer]; !seen {
			c.layerLines[layer] = entry.line
		}
	}
	return nil
}

// layerKey splits "layers.N.kind" into N and kind. N is a decimal index
// without leading zeros: the reference matches module names by suffix, so
// "layers.03.mlp" would silently match nothing there.
func (p configParser) layerKey(e mappingEntry) (int, string, error) {
	parts := strings.Split(e.key, ".")
	if len(parts) != 3 || parts[0] != "layers" {
		return 0, "", p.errorAt(e.line, e.key, "malformed layer entry: want layers.N.%s or layers.N.%s", kindMLP, kindAttention)
	}
	layer, err := strconv.Atoi(parts[1])
	if err != nil || layer < 0 || parts[1] != strconv.Itoa(layer) {
		return 0, "", p.errorAt(e.line, e.key, "malformed layer index %q: want a non-negative integer without sign or leading zeros", parts[1])
	}
	if layer >= model.MaxLayers {
		return 0, "", p.errorAt(e.line, e.key, "layer index %d is beyond the supported maximum of %d layers", layer, model.MaxLayers)
	}
	if kind := parts[2]; kind != kindMLP && kind != kindAttention {
		return 0, "", p.errorAt(e.line, e.key, "unknown kind %q: want %s or %s", kind, kindMLP, kindAttention)
	}
	return layer, parts[2], nil
}

// number reads an int or float scalar; quoted strings, booleans and
// non-finite values are errors.
func (p configParser) number(e mappingEntry) (float64, error) {
	v := e.value
	if v.Kind != yaml.ScalarNode || (v.ShortTag() != "!!int" && v.ShortTag() != "!!float") {
		return 0, p.errorAt(e.line, e.key, "want a number, got %q", v.Value)
	}
	var f float64
	if err := v.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, p.errorAt(e.line, e.key, "want a finite number, got %q", v.Value)
	}
	return f, nil
}

func (p configParser) boolean(e mappingEntry) (bool, error) {
	v := e.value
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
		return false, p.errorAt(e.line, e.key, "want true or false, got %q", v.Value)
	}
	var b bool
	if err := v.Decode(&b); err != nil {
		return false, p.errorAt(e.line, e.key, "want true or false, got %q", v.Value)
	}
	return b, nil
}
