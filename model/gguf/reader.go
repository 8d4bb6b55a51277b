package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
)

// Magic opens every GGUF file.
const Magic = "GGUF"

// Version is the GGUF version this package reads and writes.
const Version = 3

// DefaultAlignment aligns the data section and every tensor's offset when
// general.alignment is absent.
const DefaultAlignment = 32

// KeyAlignment is the metadata key that overrides DefaultAlignment.
const KeyAlignment = "general.alignment"

// KV is one metadata pair. Value holds the Go type of its GGUF type: uint8,
// int8, uint16, int16, uint32, int32, float32, bool, string, uint64, int64,
// float64, or an Array.
type KV struct {
	Key   string
	Value any
}

// Array is a metadata array: Values is a []uint8, []int8, []uint16, []int16,
// []uint32, []int32, []float32, []bool, []string, []uint64, []int64 or
// []float64 matching Elem. Arrays of arrays are refused, as llama.cpp
// refuses them.
type Array struct {
	Elem   ValueType
	Values any
}

// Len is the number of elements.
func (a Array) Len() int {
	switch v := a.Values.(type) {
	case []uint8:
		return len(v)
	case []int8:
		return len(v)
	case []uint16:
		return len(v)
	case []int16:
		return len(v)
	case []uint32:
		return len(v)
	case []int32:
		return len(v)
	case []float32:
		return len(v)
	case []bool:
		return len(v)
	case []string:
		return len(v)
	case []uint64:
		return len(v)
	case []int64:
		return len(v)
	case []float64:
		return len(v)
	}
	return 0
}

// TensorInfo describes one tensor. Dims lists the dimensions fastest first
// (ggml's ne): an HF weight [out, in] has Dims [in, out]. Offset is relative
// to the data section.
type TensorInfo struct {
	Name   string
	Dims   []int64
	Type   TensorType
	Offset int64
}

// NumElements is the product of the dimensions.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// NumBytes is the tensor's size in the data section.
func (t TensorInfo) NumBytes() int64 {
	if len(t.Dims) == 0 {
		b, _ := t.Type.RowBytes(1)
		return b
	}
	row, _ := t.Type.RowBytes(t.Dims[0])
	return row * (t.NumElements() / max(t.Dims[0], 1))
}

// File is an open GGUF file: the metadata and tensor infos in memory, the
// tensor data read on demand with ReadAt (safe for concurrent reads).
type File struct {
	path      string
	file      *os.File
	Metadata  []KV
	Tensors   []TensorInfo
	Alignment int64
	dataStart int64
	byKey     map[string]int
	byName    map[string]int
}

// maxDims is GGML_MAX_DIMS.
const maxDims = 4

// Open reads and validates the header of the GGUF file at path. The caller
// must Close it.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %w", err)
	}
	g := &File{path: path, file: f}
	if err := g.readHeader(st.Size()); err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %s: %w", path, err)
	}
	return g, nil
}

// Path is the file's path.
func (g *File) Path() string { return g.path }

// Close closes the file.
func (g *File) Close() error { return g.file.Close() }

// DataStart is the absolute file offset of the data section.
func (g *File) DataStart() int64 { return g.dataStart }

// headerReader decodes the header, never reading or allocating past the
// file's end: every length is checked against the bytes left first.
type headerReader struct {
	r    *bufio.Reader
	left int64 // bytes of the file not yet read
	err  error
}

var errTruncated = errors.New("file ends inside the header (truncated)")

func (h *headerReader) bytes(n int64) []byte {
	if h.err != nil {
		return nil
	}
	if n < 0 || n > h.left {
		h.err = errTruncated
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.r, b); err != nil {
		h.err = errTruncated
		return nil
	}
	h.left -= n
	return b
}

func (h *headerReader) u32() uint32 {
	if b := h.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (h *headerReader) u64() uint64 {
	if b := h.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (h *headerReader) str() string {
	n := h.u64()
	if h.err == nil && n > uint64(h.left) {
		h.err = fmt.Errorf("string of %d bytes: %w", n, errTruncated)
		return ""
	}
	return string(h.bytes(int64(n)))
}

// count reads an element count and checks that count elements of at least
// minSize bytes fit in what is left of the file.
func (h *headerReader) count(minSize int64) int64 {
	n := h.u64()
	if h.err == nil && (n > uint64(h.left) || int64(n)*minSize > h.left) {
		h.err = fmt.Errorf("a count of %d: %w", n, errTruncated)
		return 0
	}
	return int64(n)
}

func (g *File) readHeader(size int64) error {
	h := &headerReader{r: bufio.NewReaderSize(g.file, 1<<16), left: size}
	magic := h.bytes(4)
	if h.err != nil {
		return fmt.Errorf("not a GGUF file: %w", h.err)
	}
	if string(magic) != Magic {
		return fmt.Errorf("not a GGUF file (starts with %q, want %q)", magic, Magic)
	}
	version := h.u32()
	if h.err == nil && version != Version {
		return fmt.Errorf("GGUF version %d; this reader handles version %d", version, Version)
	}
	nTensors := h.count(8 + 4 + 4 + 8) // name length, n_dims, type, offset
	nKV := h.count(8 + 4)              // key length, type
	if h.err != nil {
		return h.err
	}
	g.byKey = make(map[string]int, nKV)
	for i := int64(0); i < nKV; i++ {
		key := h.str()
		typ := ValueType(h.u32())
		if h.err != nil {
			return fmt.Errorf("metadata pair %d: %w", i, h.err)
		}
		v, err := h.value(typ, true)
		if err != nil {
			return fmt.Errorf("metadata key %q: %w", key, err)
		}
		if _, dup := g.byKey[key]; dup {
			return fmt.Errorf("metadata key %q appears twice", key)
		}
		g.byKey[key] = len(g.Metadata)
		g.Metadata = append(g.Metadata, KV{Key: key, Value: v})
	}
	g.Alignment = DefaultAlignment
	if _, ok := g.byKey[KeyAlignment]; ok {
		a, err := g.Uint32(KeyAlignment)
		if err != nil {
			return err
		}
		if a == 0 || a&(a-1) != 0 {
			return fmt.Errorf("metadata key %q: %d is not a power of two", KeyAlignment, a)
		}
		g.Alignment = int64(a)
	}
	g.byName = make(map[string]int, nTensors)
	for i := int64(0); i < nTensors; i++ {
		t, err := h.tensorInfo()
		if err != nil {
			if t.Name != "" {
				return fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			return fmt.Errorf("tensor info %d: %w", i, err)
		}
		if _, dup := g.byName[t.Name]; dup {
			return fmt.Errorf("tensor %q appears twice", t.Name)
		}
		if t.Offset%g.Alignment != 0 {
			return fmt.Errorf("tensor %q: offset %d is not a multiple of the alignment %d", t.Name, t.Offset, g.Alignment)
		}
		g.byName[t.Name] = len(g.Tensors)
		g.Tensors = append(g.Tensors, t)
	}
	headerEnd := size - h.left
	g.dataStart = (headerEnd + g.Alignment - 1) / g.Alignment * g.Alignment
	dataSize := size - g.dataStart
	for _, t := range g.Tensors {
		if n := t.NumBytes(); t.Offset > dataSize || n > dataSize-t.Offset {
			return fmt.Errorf("tensor %q (%s, dims %v): bytes %d..%d lie beyond the data section's %d bytes (truncated file?)",
				t.Name, t.Type, t.Dims, t.Offset, t.Offset+n, max(dataSize, 0))
		}
	}
	// Overlapping tensors mean a corrupt header.
	order := make([]int, len(g.Tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return int(g.Tensors[a].Offset - g.Tensors[b].Offset) })
	for i := 1; i < len(order); i++ {
		prev, cur := g.Tensors[order[i-1]], g.Tensors[order[i]]
		if prev.Offset+prev.NumBytes() > cur.Offset {
			return fmt.Errorf("tensors %q and %q overlap in the data section", prev.Name, cur.Name)
		}
	}
	return nil
}

func (h *headerReader) tensorInfo() (TensorInfo, error) {
	var t TensorInfo
	t.Name = h.str()
	nDims := h.u32()
	if h.err != nil {
		return t, h.err
	}
	if nDims > maxDims {
		return t, fmt.Errorf("%d dimensions; ggml allows at most %d", nDims, maxDims)
	}
	elems := uint64(1)
	for d := uint32(0); d < nDims; d++ {
		n := h.u64()
		if h.err != nil {
			return t, h.err
		}
		if n > math.MaxInt64 || (n != 0 && elems > math.MaxInt64/n) {
			return t, fmt.Errorf("dimensions overflow (dimension %d is %d)", d, n)
		}
		elems *= n
		t.Dims = append(t.Dims, int64(n))
	}
	t.Type = TensorType(h.u32())
	off := h.u64()
	if h.err != nil {
		return t, h.err
	}
	if !t.Type.Known() {
		return t, fmt.Errorf("unknown tensor type %d", uint32(t.Type))
	}
	if len(t.Dims) > 0 {
		if _, err := t.Type.RowBytes(t.Dims[0]); err != nil {
			return t, fmt.Errorf("dims %v: %w", t.Dims, err)
		}
	}
	if tt := tensorTypes[t.Type]; int64(elems)/int64(tt.blockSize) > math.MaxInt64/int64(tt.typeSize) {
		return t, fmt.Errorf("dims %v: too large", t.Dims)
	}
	if off > math.MaxInt64/2 {
		return t, fmt.Errorf("offset %d out of range", off)
	}
	t.Offset = int64(off)
	return t, nil
}

// value reads one metadata value of type typ; arrays only at the top.
func (h *headerReader) value(typ ValueType, top bool) (any, error) {
	if typ == TypeArray {
		if !top {
			return nil, errors.New("an array of arrays (not supported by llama.cpp)")
		}
		elem := ValueType(h.u32())
		if h.err != nil {
			return nil, h.err
		}
		size := int64(elem.scalarSize())
		switch {
		case elem == TypeString:
			size = 8
		case elem == TypeArray:
			return nil, errors.New("an array of arrays (not supported by llama.cpp)")
		case size == 0:
			return nil, fmt.Errorf("array of unknown value type %d", uint32(elem))
		}
		n := h.count(size)
		if h.err != nil {
			return nil, h.err
		}
		return h.array(elem, n)
	}
	size := typ.scalarSize()
	if typ == TypeString {
		s := h.str()
		return s, h.err
	}
	if size == 0 {
		return nil, fmt.Errorf("unknown value type %d", uint32(typ))
	}
	b := h.bytes(int64(size))
	if h.err != nil {
		return nil, h.err
	}
	return decodeScalar(typ, b), nil
}

func decodeScalar(typ ValueType, b []byte) any {
	le := binary.LittleEndian
	switch typ {
	case TypeUint8:
		return b[0]
	case TypeInt8:
		return int8(b[0])
	case TypeBool:
		return b[0] != 0
	case TypeUint16:
		return le.Uint16(b)
	case TypeInt16:
		return int16(le.Uint16(b))
	case TypeUint32:
		return le.Uint32(b)
	case TypeInt32:
		return int32(le.Uint32(b))
	case TypeFloat32:
		return math.Float32frombits(le.Uint32(b))
	case TypeUint64:
		return le.Uint64(b)
	case TypeInt64:
		return int64(le.Uint64(b))
	case TypeFloat64:
		return math.Float64frombits(le.Uint64(b))
	}
	return nil
}

func (h *headerReader) array(elem ValueType, n int64) (any, error) {
	if elem == TypeString {
		out := make([]string, 0, n)
		for i := int64(0); i < n; i++ {
			s := h.str()
			if h.err != nil {
				return nil, fmt.Errorf("element %d: %w", i, h.err)
			}
			out = append(out, s)
		}
		return Array{Elem: elem, Values: out}, nil
	}
	size := int64(elem.scalarSize())
	raw := h.bytes(n * size)
	if h.err != nil {
		return nil, h.err
	}
	var out any
	switch elem {
	case TypeUint8:
		out = raw
	case TypeInt8:
		v := make([]int8, n)
		for i := range v {
			v[i] = int8(raw[i])
		}
		out = v
	case TypeBool:
		v := make([]bool, n)
		for i := range v {
			v[i] = raw[i] != 0
		}
		out = v
	case TypeUint16:
		out = decodeSlice(raw, 2, func(b []byte) uint16 { return binary.LittleEndian.Uint16(b) })
	case TypeInt16:
		out = decodeSlice(raw, 2, func(b []byte) int16 { return int16(binary.LittleEndian.Uint16(b)) })
	case TypeUint32:
		out = decodeSlice(raw, 4, func(b []byte) uint32 { return binary.LittleEndian.Uint32(b) })
	case TypeInt32:
		out = decodeSlice(raw, 4, func(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) })
	case TypeFloat32:
		out = decodeSlice(raw, 4, func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) })
	case TypeUint64:
		out = decodeSlice(raw, 8, func(b []byte) uint64 { return binary.LittleEndian.Uint64(b) })
	case TypeInt64:
		out = decodeSlice(raw, 8, func(b []byte) int64 { return int64(binary.LittleEndian.Uint64(b)) })
	case TypeFloat64:
		out = decodeSlice(raw, 8, func(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) })
	}
	return Array{Elem: elem, Values: out}, nil
}

func decodeSlice[T any](raw []byte, size int, dec func([]byte) T) []T {
	out := make([]T, len(raw)/size)
	for i := range out {
		out[i] = dec(raw[i*size:])
	}
	return out
}

// Has says whether key is present.
func (g *File) Has(key string) bool { _, ok := g.byKey[key]; return ok }

// Value returns a key's value, or nil and false.
func (g *File) Value(key string) (any, bool) {
	i, ok := g.byKey[key]
	if !ok {
		return nil, false
	}
	return g.Metadata[i].Value, true
}

// Tensor returns a tensor's info, or false.
func (g *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := g.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return g.Tensors[i], true
}

// typeOf names a decoded value's GGUF type.
func typeOf(v any) string {
	switch v := v.(type) {
	case Array:
		return "array of " + v.Elem.String()
	case uint8:
		return "u8"
	case int8:
		return "i8"
	case uint16:
		return "u16"
	case int16:
		return "i16"
	case uint32:
		return "u32"
	case int32:
		return "i32"
	case float32:
		return "f32"
	case bool:
		return "bool"
	case string:
		return "string"
	case uint64:
		return "u64"
	case int64:
		return "i64"
	case float64:
		return "f64"
	}
	return fmt.Sprintf("%T", v)
}

// get fetches key as a T, with errors naming the key, the file and both
// types.
func get[T any](g *File, key, want string) (T, error) {
	var zero T
	v, ok := g.Value(key)
	if !ok {
		return zero, fmt.Errorf("gguf: %s: metadata key %q missing", g.path, key)
	}
	t, ok := v.(T)
	if !ok {
		return zero, fmt.Errorf("gguf: %s: metadata key %q is %s, want %s", g.path, key, typeOf(v), want)
	}
	return t, nil
}

// getArray fetches key as an array of T.
func getArray[T any](g *File, key, want string) ([]T, error) {
	a, err := get[Array](g, key, "array of "+want)
	if err != nil {
		return nil, err
	}
	t, ok := a.Values.([]T)
	if !ok {
		return nil, fmt.Errorf("gguf: %s: metadata key %q is an array of %s, want an array of %s", g.path, key, a.Elem, want)
	}
	return t, nil
}

// Typed accessors: each fails, naming the key, when it is missing or of
// another type (llama.cpp checks types exactly too).
func (g *File) Uint32(key string) (uint32, error)      { return get[uint32](g, key, "u32") }
func (g *File) Int32(key string) (int32, error)        { return get[int32](g, key, "i32") }
func (g *File) Float32(key string) (float32, error)    { return get[float32](g, key, "f32") }
func (g *File) Bool(key string) (bool, error)          { return get[bool](g, key, "bool") }
func (g *File) String(key string) (string, error)      { return get[string](g, key, "string") }
func (g *File) Strings(key string) ([]string, error)   { return getArray[string](g, key, "string") }
func (g *File) Float32s(key string) ([]float32, error) { return getArray[float32](g, key, "f32") }
func (g *File) Int32s(key string) ([]int32, error)     { return getArray[int32](g, key, "i32") }

// ReadRaw returns a tensor's bytes as stored.
func (g *File) ReadRaw(name string) ([]byte, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf: %s: no tensor %q", g.path, name)
	}
	b := make([]byte, t.NumBytes())
	if _, err := g.file.ReadAt(b, g.dataStart+t.Offset); err != nil {
		return nil, fmt.Errorf("gguf: %s: tensor %q: %w", g.path, name, err)
	}
	return b, nil
}

// ReadFloat32 returns a tensor's values decoded to float32 (F32, F16, BF16,
// Q8_0, Q4_0, Q4_1); other types are refused by name.
func (g *File) ReadFloat32(name string) ([]float32, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf: %s: no tensor %q", g.path, name)
	}
	if !t.Type.Decodable() {
		return nil, fmt.Errorf("gguf: %s: tensor %q has type %s; sparselora reads %s", g.path, name, t.Type, DecodableTypes)
	}
	raw, err := g.ReadRaw(name)
	if err != nil {
		return nil, err
	}
	out, err := Decode(t.Type, raw, t.NumElements())
	if err != nil {
		return nil, fmt.Errorf("gguf: %s: tensor %q: %w", g.path, name, err)
	}
	return out, nil
}
