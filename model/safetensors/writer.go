package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sparselora/sparselora/internal/atomicfile"
)

// Tensor is one tensor to write: its dtype, shape and little-endian bytes.
type Tensor struct {
	Dtype Dtype
	Shape []int
	Data  []byte
}

// NewFloatTensor encodes float32 values as F32, BF16 or F16 (rounding to
// nearest, ties to even) for WriteFile.
func NewFloatTensor(dtype Dtype, shape []int, values []float32) (Tensor, error) {
	n, err := numElements(shape)
	if err != nil {
		return Tensor{}, fmt.Errorf("safetensors: %w", err)
	}
	if int64(len(values)) != n {
		return Tensor{}, fmt.Errorf("safetensors: %d values for shape %v, which holds %d", len(values), shape, n)
	}
	data := make([]byte, len(values)*dtype.Size())
	switch dtype {
	case F32:
		for i, v := range values {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		}
	case BF16:
		for i, v := range values {
			binary.LittleEndian.PutUint16(data[2*i:], Float32ToBFloat16(v))
		}
	case F16:
		for i, v := range values {
			binary.LittleEndian.PutUint16(data[2*i:], Float32ToHalf(v))
		}
	default:
		return Tensor{}, fmt.Errorf("safetensors: cannot encode float32 values as dtype %q (want F32, BF16 or F16)", dtype)
	}
	return Tensor{Dtype: dtype, Shape: slices.Clone(shape), Data: data}, nil
}

func numElements(shape []int) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > math.MaxInt64/int64(d) {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// WriteFile writes tensors (and optional string metadata) as a safetensors
// file. Tensors are laid out in name order; the header is padded with spaces
// so the data region starts 8-byte aligned, as the reference implementation
// does. The file is written atomically: to a temporary file in the same
// folder, synced, then renamed over path, so a crash leaves either the old
// file or the complete new one, never a torn checkpoint.
func WriteFile(path string, tensors map[string]Tensor, metadata map[string]string) (err error) {
	header, names, err := encodeHeader(tensors, metadata)
	if err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}

	err = atomicfile.Write(path, func(w io.Writer) error {
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(header)))
		w.Write(lenBuf[:])
		w.Write(header)
		for _, name := range names {
			if _, err := w.Write(tensors[name].Data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// encodeHeader validates the tensors and builds the padded JSON header and the
// data order (sorted names).
func encodeHeader(tensors map[string]Tensor, metadata map[string]string) ([]byte, []string, error) {
	names := make([]string, 0, len(tensors))
	for name := range tensors {
		names = append(names, name)
	}
	slices.Sort(names)

	var buf bytes.Buffer
	buf.WriteByte('{')
	if metadata != nil {
		buf.WriteString(`"` + metadataKey + `":`)
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeJSONString(&buf, k)
			buf.WriteByte(':')
			writeJSONString(&buf, metadata[k])
		}
		buf.WriteByte('}')
	}
	var offset int64
	for i, name := range names {
		t := tensors[name]
		if name == metadataKey {
			return nil, nil, fmt.Errorf("tensor name %q is reserved for metadata", name)
		}
		if !utf8.ValidString(name) {
			return nil, nil, fmt.Errorf("tensor name %q is not valid UTF-8", name)
		}
		if t.Dtype.Size() == 0 {
			return nil, nil, fmt.Errorf("tensor %q: unknown dtype %q", name, t.Dtype)
		}
		n, err := numElements(t.Shape)
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		if want := n * int64(t.Dtype.Size()); int64(len(t.Data)) != want {
			return nil, nil, fmt.Errorf("tensor %q: %d bytes of data, but shape %v of %s needs %d", name, len(t.Data), t.Shape, t.Dtype, want)
		}
		if i > 0 || metadata != nil {
			buf.WriteByte(',')
		}
		writeJSONString(&buf, name)
		shape := make([]string, len(t.Shape))
		for j, d := range t.Shape {
			shape[j] = fmt.Sprint(d)
		}
		fmt.Fprintf(&buf, `:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}`,
			t.Dtype, strings.Join(shape, ","), offset, offset+int64(len(t.Data)))
		offset += int64(len(t.Data))
	}
	buf.WriteByte('}')
	for buf.Len()%8 != 0 {
		buf.WriteByte(' ')
	}
	if buf.Len() > maxHeaderSize {
		return nil, nil, errors.New("header exceeds the format's 100 MB limit")
	}
	return buf.Bytes(), names, nil
}

// writeJSONString writes s as a JSON string without HTML escaping, so names
// appear in the header as other tools write them.
func writeJSONString(buf *bytes.Buffer, s string) {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	enc.Encode(s)               // cannot fail for a string
	buf.Truncate(buf.Len() - 1) // drop the newline Encode appends
}
