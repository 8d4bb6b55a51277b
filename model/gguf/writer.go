package gguf

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// Tensor is one tensor to write: its info (Offset is assigned by the
// writer) and a function producing its bytes, called once while writing,
// so a large model never has to be held in memory whole.
type Tensor struct {
	Name string
	Dims []int64
	Type TensorType
	Data func() ([]byte, error)
}

// Write writes a GGUF file: the header with meta in the order given, the
// tensor infos in the order given, then each tensor's bytes padded to the
// alignment (general.alignment if meta sets it as a u32, else 32), as
// llama.cpp's gguf_write does. Sizes are checked against each tensor's type
// and dimensions.
func Write(w io.Writer, meta []KV, tensors []Tensor) error {
	align := int64(DefaultAlignment)
	seen := map[string]bool{}
	for _, kv := range meta {
		if seen[kv.Key] {
			return fmt.Errorf("gguf: metadata key %q given twice", kv.Key)
		}
		seen[kv.Key] = true
		if kv.Key == KeyAlignment {
			a, ok := kv.Value.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("gguf: metadata key %q: want a power of two as u32, got %v", KeyAlignment, kv.Value)
			}
			align = int64(a)
		}
	}
	var hdr []byte
	hdr = append(hdr, Magic...)
	hdr = binary.LittleEndian.AppendUint32(hdr, Version)
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(len(tensors)))
	hdr = binary.LittleEndian.AppendUint64(hdr, uint64(len(meta)))
	for _, kv := range meta {
		var err error
		hdr = appendString(hdr, kv.Key)
		if hdr, err = appendValue(hdr, kv.Value, true); err != nil {
			return fmt.Errorf("gguf: metadata key %q: %w", kv.Key, err)
		}
	}
	sizes := make([]int64, len(tensors))
	names := map[string]bool{}
	var offset int64
	for i, t := range tensors {
		if names[t.Name] {
			return fmt.Errorf("gguf: tensor %q given twice", t.Name)
		}
		names[t.Name] = true
		if len(t.Dims) == 0 || len(t.Dims) > maxDims {
			return fmt.Errorf("gguf: tensor %q: %d dimensions, want 1..%d", t.Name, len(t.Dims), maxDims)
		}
		info := TensorInfo{Name: t.Name, Dims: t.Dims, Type: t.Type}
		if _, err := t.Type.RowBytes(t.Dims[0]); err != nil {
			return fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		sizes[i] = info.NumBytes()
		hdr = appendString(hdr, t.Name)
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(t.Dims)))
		for _, d := range t.Dims {
			hdr = binary.LittleEndian.AppendUint64(hdr, uint64(d))
		}
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(t.Type))
		hdr = binary.LittleEndian.AppendUint64(hdr, uint64(offset))
		offset += pad(sizes[i], align)
	}
	hdr = append(hdr, make([]byte, pad(int64(len(hdr)), align)-int64(len(hdr)))...)
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	for i, t := range tensors {
		data, err := t.Data()
		if err != nil {
			return fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		if int64(len(data)) != sizes[i] {
			return fmt.Errorf("gguf: tensor %q: %d bytes, but %s of dims %v takes %d", t.Name, len(data), t.Type, t.Dims, sizes[i])
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		if _, err := w.Write(make([]byte, pad(sizes[i], align)-sizes[i])); err != nil {
			return err
		}
	}
	return nil
}

func pad(n, align int64) int64 { return (n + align - 1) / align * align }

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// appendValue encodes a value with its type tag.
func appendValue(b []byte, v any, top bool) ([]byte, error) {
	le := binary.LittleEndian
	tag := func(t ValueType) { b = le.AppendUint32(b, uint32(t)) }
	switch v := v.(type) {
	case uint8:
		tag(TypeUint8)
		b = append(b, v)
	case int8:
		tag(TypeInt8)
		b = append(b, byte(v))
	case uint16:
		tag(TypeUint16)
		b = le.AppendUint16(b, v)
	case int16:
		tag(TypeInt16)
		b = le.AppendUint16(b, uint16(v))
	case uint32:
		tag(TypeUint32)
		b = le.AppendUint32(b, v)
	case int32:
		tag(TypeInt32)
		b = le.AppendUint32(b, uint32(v))
	case float32:
		tag(TypeFloat32)
		b = le.AppendUint32(b, math.Float32bits(v))
	case bool:
		tag(TypeBool)
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	case string:
		tag(TypeString)
		b = appendString(b, v)
	case uint64:
		tag(TypeUint64)
		b = le.AppendUint64(b, v)
	case int64:
		tag(TypeInt64)
		b = le.AppendUint64(b, uint64(v))
	case float64:
		tag(TypeFloat64)
		b = le.AppendUint64(b, math.Float64bits(v))
	case Array:
		if !top {
			return nil, fmt.Errorf("an array of arrays is not supported")
		}
		return appendArray(b, v)
	default:
		return nil, fmt.Errorf("unsupported value type %T", v)
	}
	return b, nil
}

func appendArray(b []byte, a Array) ([]byte, error) {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(TypeArray))
	b = le.AppendUint32(b, uint32(a.Elem))
	b = le.AppendUint64(b, uint64(a.Len()))
	mismatch := fmt.Errorf("array of %s holds %T", a.Elem, a.Values)
	switch v := a.Values.(type) {
	case []uint8:
		if a.Elem != TypeUint8 {
			return nil, mismatch
		}
		b = append(b, v...)
	case []int8:
		if a.Elem != TypeInt8 {
			return nil, mismatch
		}
		for _, x := range v {
			b = append(b, byte(x))
		}
	case []bool:
		if a.Elem != TypeBool {
			return nil, mismatch
		}
		for _, x := range v {
			if x {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
	case []uint16:
		if a.Elem != TypeUint16 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint16(b, x)
		}
	case []int16:
		if a.Elem != TypeInt16 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint16(b, uint16(x))
		}
	case []uint32:
		if a.Elem != TypeUint32 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint32(b, x)
		}
	case []int32:
		if a.Elem != TypeInt32 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint32(b, uint32(x))
		}
	case []float32:
		if a.Elem != TypeFloat32 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint32(b, math.Float32bits(x))
		}
	case []uint64:
		if a.Elem != TypeUint64 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint64(b, x)
		}
	case []int64:
		if a.Elem != TypeInt64 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint64(b, uint64(x))
		}
	case []float64:
		if a.Elem != TypeFloat64 {
			return nil, mismatch
		}
		for _, x := range v {
			b = le.AppendUint64(b, math.Float64bits(x))
		}
	case []string:
		if a.Elem != TypeString {
			return nil, mismatch
		}
		for _, x := range v {
			b = appendString(b, x)
		}
	default:
		return nil, mismatch
	}
	return b, nil
}
