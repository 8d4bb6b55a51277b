package data

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes through every format parser (the first line
// picks the format; seeds cover each one, see testdata/fuzz/FuzzLoad) and the
// loader, under varied options and chat templates. It checks that nothing
// panics and that whatever loads keeps the dataset's invariants.
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"text", "prompt_completion", "messages", "alpaca", "tokenized"} {
		content, err := os.ReadFile(filepath.Join("testdata", name+".jsonl"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(content, false, 0, 0)
		f.Add(content, true, 12, 1)
	}
	f.Fuzz(func(t *testing.T, content []byte, skip bool, maxSeqLen int, template int) {
		maxSeqLen = max(0, maxSeqLen%64)
		tok := &fakeTok{template: templateKind(((template % 6) + 6) % 6)}
		opts := Options{SkipBadLines: skip, MaxSeqLen: maxSeqLen, VocabSize: fakeVocab, MaxLineBytes: 4096}
		ds, err := LoadReader(context.Background(), bytes.NewReader(content), "fuzz.jsonl", tok, opts)
		if err != nil {
			return
		}
		tokens, scored, maxLen := 0, 0, 0
		for _, ex := range ds.Examples {
			if len(ex.IDs) != len(ex.Labels) || len(ex.IDs) == 0 {
				t.Fatalf("line %d: %d ids, %d labels", ex.Line, len(ex.IDs), len(ex.Labels))
			}
			if maxSeqLen > 0 && len(ex.IDs) > maxSeqLen {
				t.Fatalf("line %d: %d ids beyond max %d", ex.Line, len(ex.IDs), maxSeqLen)
			}
			if ex.PromptLen < 0 || ex.PromptLen > len(ex.IDs) {
				t.Fatalf("line %d: prompt length %d of %d ids", ex.Line, ex.PromptLen, len(ex.IDs))
			}
			for i, id := range ex.IDs {
				if id < 0 || id >= fakeVocab {
					t.Fatalf("line %d: id %d", ex.Line, id)
				}
				if l := ex.Labels[i]; l != IgnoreIndex && (l < 0 || l >= fakeVocab) {
					t.Fatalf("line %d: label %d", ex.Line, l)
				}
			}
			if ex.Targets() == 0 {
				t.Fatalf("line %d: no targets", ex.Line)
			}
			tokens += len(ex.IDs)
			scored += ex.Targets()
			maxLen = max(maxLen, len(ex.IDs))
		}
		if tokens != ds.Tokens || scored != ds.ScoredTokens || maxLen != ds.MaxLen {
			t.Fatalf("totals %d %d %d, dataset says %d %d %d", tokens, scored, maxLen, ds.Tokens, ds.ScoredTokens, ds.MaxLen)
		}
		l, err := NewLoader(ds, LoaderOptions{BatchSize: 3, GradAccum: 2, Shuffle: true, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		batchTargets := 0
		for range l.StepsPerEpoch() {
			micro, _, err := l.Next()
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range micro {
				batchTargets += TargetCount(b)
			}
		}
		if batchTargets != ds.ScoredTokens {
			t.Fatalf("an epoch's batches have %d targets, the dataset %d", batchTargets, ds.ScoredTokens)
		}
	})
}
