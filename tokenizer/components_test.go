package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sparselora/sparselora/internal/fixtures"
)

// hfComponents is testdata/hf_components.json, written by testdata/hfgen/gen.js with Hugging
// Face tokenizers 0.23.2 (the npm build of the Rust library): small tokenizer.json files that
// exercise each supported normalizer, pre-tokenizer, post-processor, decoder and added-token flag,
// and the three real tokenizers on random hard strings. These are `tokenizers`-level outputs
// (no tokenizer_config.json), so they are compared with parseTokenizerJSON alone.
type hfComponents struct {
	Tokenizers []struct {
		Name  string          `json:"name"`
		File  *string         `json:"file"`
		JSON  json.RawMessage `json:"json"`
		Cases []struct {
			Text               string `json:"text"`
			IDs                []int  `json:"ids"`
			IDsWithSpecial     []int  `json:"ids_with_special"`
			Decoded            string `json:"decoded"`
			DecodedSkipSpecial string `json:"decoded_skip_special"`
		} `json:"cases"`
	} `json:"tokenizers"`
}

func TestTokenizerComponentsMatchHF(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "hf_components.json"))
	if err != nil {
		t.Fatal(err)
	}
	var hc hfComponents
	if err := json.Unmarshal(data, &hc); err != nil {
		t.Fatalf("testdata/hf_components.json: %v", err)
	}
	total, passed := 0, 0
	for _, spec := range hc.Tokenizers {
		body := []byte(spec.JSON)
		if spec.File != nil {
			name := filepath.Base(filepath.Dir(*spec.File))
			if body, err = os.ReadFile(filepath.Join(fixtures.Tokenizer(t, name), "tokenizer.json")); err != nil {
				t.Fatal(err)
			}
		}
		tok, err := parseTokenizerJSON(body)
		if err != nil {
			t.Errorf("%s: %v", spec.Name, err)
			continue
		}
		failures := 0
		for _, c := range spec.Cases {
			ids := tok.Encode(c.Text, false)
			withSpecial := tok.Encode(c.Text, true)
			decoded := tok.Decode(c.IDsWithSpecial, false)
			skipped := tok.Decode(c.IDsWithSpecial, true)
			for _, check := range []struct {
				what string
				ok   bool
				got  any
				want any
			}{
				{"ids", slices.Equal(ids, c.IDs), ids, c.IDs},
				{"ids_with_special", slices.Equal(withSpecial, c.IDsWithSpecial), withSpecial, c.IDsWithSpecial},
				{"decoded", decoded == c.Decoded, decoded, c.Decoded},
				{"decoded_skip_special", skipped == c.DecodedSkipSpecial, skipped, c.DecodedSkipSpecial},
			} {
				total++
				if check.ok {
					passed++
					continue
				}
				if failures++; failures <= 5 {
					t.Errorf("%s %q: %s: got %#v, want %#v", spec.Name, c.Text, check.what, check.got, check.want)
				}
			}
		}
		if failures > 5 {
			t.Errorf("%s: %d failures in all", spec.Name, failures)
		}
	}
	t.Logf("%d/%d checks against HF tokenizers pass", passed, total)
}
