package tokenizer

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/sparselora/sparselora/data/synth"
)

func trainingCorpus(t *testing.T, n int) []string {
	t.Helper()
	docs, err := synth.Corpus(context.Background(), n, 1)
	if err != nil {
		t.Fatal(err)
	}
	texts := make([]string, len(docs))
	for i, d := range docs {
		texts[i] = d.Text
	}
	return texts
}

func trainAndLoad(t *testing.T, texts []string, opts TrainOptions) (*TrainedBPE, *Tokenizer, string) {
	t.Helper()
	trained, err := TrainBPE(context.Background(), texts, opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := trained.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatalf("the trained files do not load: %v", err)
	}
	return trained, tok, dir
}

func TestTrainedTokenizerLoadsAndRoundTrips(t *testing.T) {
	texts := trainingCorpus(t, 1500)
	trained, tok, dir := trainAndLoad(t, texts, DefaultTrainOptions())
	if trained.VocabSize() != 512 || tok.VocabSize() != 512 {
		t.Fatalf("vocabulary: trained %d, loaded %d, want 512", trained.VocabSize(), tok.VocabSize())
	}
	// The special tokens have the ids of testdata/tokenizers/bytes.
	ref, err := Load(filepath.Join("..", "testdata", "tokenizers", "bytes"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range DefaultTrainOptions().SpecialTokens {
		want, _ := ref.TokenID(s)
		if got, ok := tok.TokenID(s); !ok || got != want {
			t.Errorf("special token %s: id %d, the byte tokenizer has %d", s, got, want)
		}
	}
	bos, _ := ref.BOS()
	eos, _ := ref.EOS()
	if got, ok := tok.BOS(); !ok || got != bos {
		t.Errorf("BOS %d, want %d", got, bos)
	}
	if got, ok := tok.EOS(); !ok || got != eos {
		t.Errorf("EOS %d, want %d", got, eos)
	}
	if tok.ModelMaxLength() != 4096 {
		t.Errorf("model_max_length %d", tok.ModelMaxLength())
	}
	// The chat template is the byte tokenizer's.
	var cfg, refCfg map[string]any
	for path, dst := range map[string]*map[string]any{
		filepath.Join(dir, "tokenizer_config.json"):                                     &cfg,
		filepath.Join("..", "testdata", "tokenizers", "bytes", "tokenizer_config.json"): &refCfg,
	} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, dst); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"chat_template", "bos_token", "eos_token"} {
		if cfg[k] != refCfg[k] {
			t.Errorf("%s: %v, the byte tokenizer has %v", k, cfg[k], refCfg[k])
		}
	}
	msgs := json.RawMessage(`[{"role":"user","content":"Mia has 3 apples."},{"role":"assistant","content":"3"}]`)
	got, err := tok.ApplyChatTemplate(msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ref.ApplyChatTemplate(msgs, false)
	if got != want {
		t.Errorf("chat render %q, the byte tokenizer gives %q", got, want)
	}

	// Round trips: the corpus, arbitrary Unicode, and text holding special tokens.
	rng := rand.New(rand.NewPCG(1, 2))
	samples := append([]string{}, texts[:200]...)
	samples = append(samples, "naïve café, 東京タワー 🚀🙂 — Ελληνικά\t\r\n  double  spaces   ", "", " ", "\n\n", "12345678901234567890",
		"don't I'll WE'RE", "\x00\x01\x7f", "<|user|>hi<|assistant|>3<|endoftext|>", "<|bos|")
	for range 200 {
		var b strings.Builder
		for range rng.IntN(40) {
			switch rng.IntN(4) {
			case 0:
				b.WriteRune(rune(rng.IntN(0x80)))
			case 1:
				b.WriteRune(rune(0x80 + rng.IntN(0x800)))
			case 2:
				b.WriteRune(rune(0x3000 + rng.IntN(0x1000)))
			default:
				b.WriteRune(rune(0x1F300 + rng.IntN(0x300)))
			}
		}
		samples = append(samples, b.String())
	}
	for _, s := range samples {
		if !utf8.ValidString(s) {
			t.Fatalf("test bug: invalid UTF-8 sample %q", s)
		}
		ids := tok.Encode(s, false)
		if got := tok.Decode(ids, false); got != s {
			t.Errorf("round trip of %q gave %q (ids %v)", s, got, ids)
		}
		withBOS := tok.Encode(s, true)
		if len(withBOS) == 0 || withBOS[0] != bos || !slices.Equal(withBOS[1:], ids) {
			t.Errorf("Encode(%q, true) = %v, want BOS then %v", s, withBOS, ids)
		}
	}
}

func TestDigitsApart(t *testing.T) {
	opts := DefaultTrainOptions()
	opts.DigitsApart = true
	if fastMatcher(DigitSplitPattern) == nil {
		t.Error("DigitSplitPattern has no fast matcher: encoding would fall back to regexp2")
	}
	_, tok, _ := trainAndLoad(t, trainingCorpus(t, 300), opts)
	for _, s := range []string{" 1234 and 56", "x = 77 + 1"} {
		ids := tok.Encode(s, false)
		if got := tok.Decode(ids, false); got != s {
			t.Errorf("round trip of %q gave %q", s, got)
		}
		for _, id := range ids {
			if piece := tok.Decode([]int{id}, false); strings.ContainsAny(piece, "0123456789") && len(strings.TrimSpace(piece)) > 1 {
				t.Errorf("token %q holds more than one digit", piece)
			}
		}
	}
}

func TestTrainedTokenizerCompresses(t *testing.T) {
	texts := trainingCorpus(t, 1500)
	_, tok, _ := trainAndLoad(t, texts, DefaultTrainOptions())
	// Held-out documents of the same world (another seed).
	docs, err := synth.Corpus(context.Background(), 300, 2)
	if err != nil {
		t.Fatal(err)
	}
	var nBytes, nTokens int
	for _, d := range docs {
		nBytes += len(d.Text)
		nTokens += len(tok.Encode(d.Text, false))
	}
	if ratio := float64(nBytes) / float64(nTokens); ratio < 2.5 {
		t.Errorf("%.2f bytes per token on held-out text; a trained 512-id vocabulary should reach 2.5", ratio)
	}
}

func TestTrainingIsDeterministic(t *testing.T) {
	texts := trainingCorpus(t, 400)
	opts := DefaultTrainOptions()
	opts.VocabSize = 400
	a, err := TrainBPE(context.Background(), texts, opts)
	if err != nil {
		t.Fatal(err)
	}
	shuffled := slices.Clone(texts)
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	b, err := TrainBPE(context.Background(), shuffled, opts)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := a.TokenizerJSON()
	jb, _ := b.TokenizerJSON()
	if !bytes.Equal(ja, jb) {
		t.Error("the same corpus (in another order) gave a different tokenizer.json")
	}
}

// naiveMerges is textbook BPE: recount every pair of every word occurrence before each merge.
func naiveMerges(texts []string, maxMerges int, digitsApart bool) [][2]string {
	split := matchGPT2
	if digitsApart {
		split = func(s string, i int) int { return matchLlama3Family(s, i, 1) }
	}
	var words [][]string
	for _, text := range texts {
		for _, r := range fastFindAll(text, split) {
			var syms []string
			for _, c := range []byte(text[r[0]:r[1]]) {
				syms = append(syms, string(byteToRune[c]))
			}
			words = append(words, syms)
		}
	}
	id := map[string]int{}
	for b := range 256 {
		id[string(byteToRune[b])] = b
	}
	var merges [][2]string
	for len(merges) < maxMerges {
		counts := map[[2]string]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w); i++ {
				counts[[2]string{w[i], w[i+1]}]++
			}
		}
		var best [2]string
		bestCount := 0
		for p, c := range counts {
			better := c > bestCount || c == bestCount &&
				(id[p[0]] < id[best[0]] || id[p[0]] == id[best[0]] && id[p[1]] < id[best[1]])
			if better {
				best, bestCount = p, c
			}
		}
		if bestCount < 2 {
			break
		}
		merges = append(merges, best)
		id[best[0]+best[1]] = 256 + 4 + len(merges) // after the 4 specials, as the trainer numbers ids
		for wi, w := range words {
			var out []string
			for i := 0; i < len(w); i++ {
				if i+1 < len(w) && w[i] == best[0] && w[i+1] == best[1] {
					out = append(out, best[0]+best[1])
					i++
					continue
				}
				out = append(out, w[i])
			}
			words[wi] = out
		}
	}
	return merges
}

func TestTrainingMatchesTextbookBPE(t *testing.T) {
	texts := trainingCorpus(t, 150)
	texts = append(texts, "aaaa aaa aa aaaaa", "ababab abab", "Zürich Zürich Zürich 東京 東京")
	for _, digitsApart := range []bool{false, true} {
		opts := DefaultTrainOptions()
		opts.VocabSize = 256 + 4 + 120
		opts.DigitsApart = digitsApart
		trained, err := TrainBPE(context.Background(), texts, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := naiveMerges(texts, 120, digitsApart)
		if !slices.Equal(trained.Merges, want) {
			for i := range min(len(want), len(trained.Merges)) {
				if trained.Merges[i] != want[i] {
					t.Fatalf("digits apart %v: merge %d: %q, textbook BPE gives %q (of %d and %d merges)", digitsApart, i, trained.Merges[i], want[i], len(trained.Merges), len(want))
				}
			}
			t.Fatalf("digits apart %v: %d merges, textbook BPE gives %d", digitsApart, len(trained.Merges), len(want))
		}
	}
}

func TestTrainingStopsAndChecks(t *testing.T) {
	opts := DefaultTrainOptions()
	// A tiny corpus runs out of pairs seen twice: fewer ids than asked, and still loadable.
	trained, tok, _ := trainAndLoad(t, []string{"abab", "cdcd"}, opts)
	if trained.VocabSize() >= 512 || tok.VocabSize() != trained.VocabSize() {
		t.Errorf("tiny corpus: trained %d ids, loaded %d", trained.VocabSize(), tok.VocabSize())
	}
	if got := tok.Decode(tok.Encode("abcd", false), false); got != "abcd" {
		t.Errorf("round trip %q", got)
	}
	for _, bad := range []func(*TrainOptions){
		func(o *TrainOptions) { o.VocabSize = 259 },
		func(o *TrainOptions) { o.BOS = "<s>" },
		func(o *TrainOptions) { o.SpecialTokens = append(o.SpecialTokens, "<|bos|>") },
		func(o *TrainOptions) { o.MinFrequency = -3 },
		func(o *TrainOptions) { o.ModelMaxLength = -5 },
	} {
		o := DefaultTrainOptions()
		bad(&o)
		if _, err := TrainBPE(context.Background(), nil, o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := TrainBPE(ctx, []string{"abc"}, opts); err == nil {
		t.Error("a cancelled context did not stop training")
	}
}
