package model

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// jsonObject is one JSON object of a config file, decoded lazily so each value can
// be type-checked with an error that names the file and the field (with its
// path, e.g. "rope_scaling.factor").
type jsonObject struct {
	source string // the file, for errors
	prefix string // "" at top level, "rope_scaling." inside that object
	values map[string]json.RawMessage
}

func decodeJSONObject(source, prefix string, raw []byte) (jsonObject, error) {
	f := jsonObject{source: source, prefix: prefix}
	if err := json.Unmarshal(raw, &f.values); err != nil || f.values == nil {
		if prefix == "" {
			if err == nil {
				err = fmt.Errorf("not a JSON object")
			}
			return f, fmt.Errorf("model: %s: malformed config: %v", source, err)
		}
		return f, fmt.Errorf("model: %s: field %q: want an object", source, prefix[:len(prefix)-1])
	}
	return f, nil
}

func (f jsonObject) errorf(key, format string, args ...any) error {
	return fmt.Errorf("model: %s: field %q: "+format, append([]any{f.source, f.prefix + key}, args...)...)
}

// has reports whether key is present with a non-null value; HF treats an
// explicit null like an absent field.
func (f jsonObject) has(key string) bool {
	raw, ok := f.values[key]
	return ok && !bytes.Equal(raw, []byte("null"))
}

// number parses a JSON number (not a string that looks like one).
func (f jsonObject) number(key string) (float64, string, error) {
	raw := f.values[key]
	if len(raw) == 0 || !(raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') {
		return 0, "", f.errorf(key, "want a number, got %s", raw)
	}
	v, err := strconv.ParseFloat(string(raw), 64)
	if err != nil {
		return 0, "", f.errorf(key, "want a number, got %s", raw)
	}
	return v, string(raw), nil
}

func (f jsonObject) getFloat(key string) (v float64, ok bool, err error) {
	if !f.has(key) {
		return 0, false, nil
	}
	v, _, err = f.number(key)
	return v, err == nil, err
}

func (f jsonObject) getInt(key string) (int, bool, error) {
	if !f.has(key) {
		return 0, false, nil
	}
	v, text, err := f.number(key)
	if err != nil {
		return 0, false, err
	}
	// Python writes integers without a fraction; accept 64.0 too, but not 64.5.
	if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
		return 0, false, f.errorf(key, "want an integer, got %s", text)
	}
	return int(v), true, nil
}

func (f jsonObject) getBool(key string) (v bool, ok bool, err error) {
	if !f.has(key) {
		return false, false, nil
	}
	if err := json.Unmarshal(f.values[key], &v); err != nil {
		return false, false, f.errorf(key, "want true or false, got %s", f.values[key])
	}
	return v, true, nil
}

func (f jsonObject) getString(key string) (v string, ok bool, err error) {
	if !f.has(key) {
		return "", false, nil
	}
	if err := json.Unmarshal(f.values[key], &v); err != nil {
		return "", false, f.errorf(key, "want a string, got %s", f.values[key])
	}
	return v, true, nil
}

func (f jsonObject) getStrings(key string) (v []string, ok bool, err error) {
	if !f.has(key) {
		return nil, false, nil
	}
	if err := json.Unmarshal(f.values[key], &v); err != nil {
		return nil, false, f.errorf(key, "want a list of strings, got %s", f.values[key])
	}
	return v, true, nil
}

func (f jsonObject) getObject(key string) (jsonObject, bool, error) {
	if !f.has(key) {
		return jsonObject{}, false, nil
	}
	obj, err := decodeJSONObject(f.source, f.prefix+key+".", f.values[key])
	return obj, err == nil, err
}

// requiredPositive reads a size field that must be present and > 0.
func (f jsonObject) requiredPositive(key string) (int, error) {
	v, ok, err := f.getInt(key)
	switch {
	case err != nil:
		return 0, err
	case !ok:
		return 0, f.errorf(key, "missing")
	case v <= 0:
		return 0, f.errorf(key, "must be positive, got %d", v)
	}
	return v, nil
}

// intOrList reads a token id that may be an int or a list of ints (HF allows
// eos_token_id to be either).
func (f jsonObject) intOrList(key string) ([]int, error) {
	if !f.has(key) {
		return nil, nil
	}
	raw := f.values[key]
	if raw[0] != '[' {
		v, _, err := f.getInt(key)
		if err != nil {
			return nil, err
		}
		return []int{v}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, f.errorf(key, "want an integer or a list of integers, got %s", raw)
	}
	ids := make([]int, len(items))
	for i, item := range items {
		elem := jsonObject{source: f.source, prefix: f.prefix, values: map[string]json.RawMessage{fmt.Sprintf("%s[%d]", key, i): item}}
		v, ok, err := elem.getInt(fmt.Sprintf("%s[%d]", key, i))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, f.errorf(key, "null in the list")
		}
		ids[i] = v
	}
	return ids, nil
}
