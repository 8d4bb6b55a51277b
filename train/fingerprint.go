package train

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sparselora/sparselora/lora"
	"github.com/sparselora/sparselora/model"
	"github.com/sparselora/sparselora/predictor"
)

// Fields of a checkpoint's fingerprint that identify the run's inputs, beside
// its settings (run.fingerprint). Hashes are cut to 16 hex digits: they tell
// an accidental change apart, which is all they are for.
const (
	// fpModel identifies the base model's files as the SVD cache does: path,
	// size, modification time and safetensors header of each.
	fpModel = "model"
	// fpModelContent is the hash of the files' bytes (--verify only).
	fpModelContent = "model-content"
	fpDataBytes    = "data-bytes"
	fpDataSHA256   = "data-sha256"
)

// inputsFingerprint names what the run trains on besides its settings and
// the base model (modelFingerprint): the LoRA adapter's shape and the
// training data's content.
func (r *run) inputsFingerprint() (string, error) {
	c := r.cfg
	var fields []string
	add := func(key, value string) { fields = append(fields, key+"="+value) }
	switch {
	case c.Full:
	case c.AdapterInit != "":
		abs, err := filepath.Abs(c.AdapterInit)
		if err != nil {
			return "", fmt.Errorf("--adapter-init: %w", err)
		}
		add("adapter-init", abs)
	default:
		targets, err := lora.ParseTargets(c.Targets)
		if err != nil {
			return "", err
		}
		// In model order: "v,q" trains the same adapters as "q,v".
		targets = slices.Compact(slices.Sorted(slices.Values(targets)))
		names := make([]string, len(targets))
		for i, t := range targets {
			names[i] = t.String()
		}
		add("rank", fmt.Sprint(c.Rank))
		add("alpha", fmt.Sprintf("%g", c.Alpha))
		add("targets", strings.Join(names, ","))
	}
	d := r.plan.TrainData
	add(fpDataBytes, fmt.Sprint(d.Bytes))
	add(fpDataSHA256, short(d.SHA256))
	return strings.Join(fields, " "), nil
}

// modelFingerprint identifies the base model m was loaded from, for LoRA
// runs ("" for full-parameter training, which resumes from the checkpoint's
// own weights, and for a model built in memory).
func (r *run) modelFingerprint(ctx context.Context, m *model.Model) (string, error) {
	if r.cfg.Full || len(m.Sources) == 0 {
		return "", nil
	}
	key, err := predictor.SourcesKey(m.Sources)
	if err != nil {
		return "", fmt.Errorf("--model: %w", err)
	}
	fp := fpModel + "=" + short(key)
	if r.cfg.Verify {
		content, err := predictor.SourcesContentHash(ctx, m.Sources)
		if err != nil {
			return "", fmt.Errorf("--verify: %w", err)
		}
		fp += " " + fpModelContent + "=" + short(content)
	}
	return fp, nil
}

// checkResume refuses to resume from the checkpoint resumeDir (none when "")
// whose state st has a fingerprint other than now, leaving out the fields
// ignore.
func checkResume(resumeDir string, st trainerState, now string, ignore ...string) error {
	if resumeDir == "" {
		return nil
	}
	if diff := fingerprintDiff(st.Fingerprint, now, ignore...); diff != "" {
		return fmt.Errorf("%s was written by a run with other inputs or settings (%s); resuming with these would not reproduce it: use the run's model, data and %s",
			resumeDir, diff, ConfigFileName)
	}
	return nil
}

// fingerprintDiff names the fields of two fingerprints (space-separated
// key=value) that differ, e.g. "steps=30 then, 200 now"; "" when they agree.
// A field the checkpoint did not record (an older version wrote it) counts as
// a difference: the resume could not be checked. The model's file identity
// is not compared when both sides hashed the model's content (--verify) and
// those hashes agree: a copied or touched model is the same model.
// model-content is compared only when both sides have it.
// Fields named in ignore are left out on both sides.
func fingerprintDiff(then, now string, ignore ...string) string {
	old, cur := fingerprintFields(then), fingerprintFields(now)
	for _, k := range ignore {
		delete(old, k)
		delete(cur, k)
	}
	contentChecked := old[fpModelContent] != "" && cur[fpModelContent] != ""
	var diffs []string
	for _, kv := range strings.Fields(now) {
		k, v, _ := strings.Cut(kv, "=")
		if slices.Contains(ignore, k) {
			continue
		}
		switch {
		case k == fpModelContent && !contentChecked:
			continue
		case k == fpModel && contentChecked && old[fpModelContent] == cur[fpModelContent]:
			continue
		}
		was, recorded := old[k]
		switch {
		case !recorded:
			diffs = append(diffs, fmt.Sprintf("%s not recorded then (an older checkpoint), %s now", k, v))
		case was != v:
			diffs = append(diffs, fmt.Sprintf("%s=%s then, %s now%s", k, was, v, fingerprintHint(k)))
		}
	}
	for _, kv := range strings.Fields(then) {
		k, v, _ := strings.Cut(kv, "=")
		if _, ok := cur[k]; !ok && k != fpModelContent && !slices.Contains(ignore, k) {
			diffs = append(diffs, fmt.Sprintf("%s=%s then, none now", k, v))
		}
	}
	return strings.Join(diffs, "; ")
}

// fingerprintHint says what a changed input field means.
func fingerprintHint(key string) string {
	switch key {
	case fpModel:
		return " (the base model's files differ in path, size, modification time or safetensors header; with --verify on both runs a copied model whose content is unchanged is accepted)"
	case fpModelContent:
		return " (the base model's weights differ)"
	case fpDataBytes, fpDataSHA256:
		return " (the training data's content changed)"
	}
	return ""
}

func fingerprintFields(fp string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Fields(fp) {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// short cuts a hex hash to the 16 digits a fingerprint keeps.
func short(hash string) string { return hash[:min(16, len(hash))] }
