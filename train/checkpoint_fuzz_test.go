package train

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseState feeds the checkpoint reader arbitrary trainer_state.json
// files: it must not panic, must name the file in its errors, and what it
// accepts must survive being written back.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"step": 3, "total_steps": 10, "epoch": 0.5, "cursor": {"epoch": 0, "micro": 6, "examples": 12, "seed": 42}, "tokens": 90, "fingerprint": "steps=10 rank=4"}`), 3)
	f.Add([]byte(`{"step": 0}`), 0)
	f.Add([]byte(`{"step": 5, "total_steps": 2}`), 5)
	f.Add([]byte(`[`), 1)
	f.Fuzz(func(t *testing.T, raw []byte, folderStep int) {
		folder := checkpointPrefix + strconv.Itoa(folderStep)
		st, err := parseState(raw, "ckpt/trainer_state.json", folder)
		if err != nil {
			if !strings.Contains(err.Error(), "ckpt/trainer_state.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		again, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseState(again, "ckpt/trainer_state.json", folder)
		if err != nil || back.Step != st.Step || back.Fingerprint != st.Fingerprint {
			t.Fatalf("written back %s: %+v, %v", again, back, err)
		}
	})
}

func TestParseStateChecksTheStep(t *testing.T) {
	for raw, want := range map[string]string{
		`{"step": 0, "total_steps": 4}`:  "step 0, want at least 1",
		`{"step": 5, "total_steps": 4}`:  "total_steps 4 is below step 5",
		`{"step": 2, "total_steps": 4}`:  "does not match its folder checkpoint-3",
		`{"step": 3, "total_steps": 4}x`: "ckpt/trainer_state.json: invalid character",
	} {
		if _, err := parseState([]byte(raw), "ckpt/trainer_state.json", "checkpoint-3"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", raw, err, want)
		}
	}
}
