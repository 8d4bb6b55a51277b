package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
	"sort"
)

// maxHeaderSize is the reference implementation's limit on the JSON header;
// anything larger is a corrupt length field, not a real header.
const maxHeaderSize = 100_000_000

// metadataKey is the reserved header entry holding free-form string metadata.
const metadataKey = "__metadata__"

// ErrNotFound is wrapped by the errors returned for a tensor name that a file
// or checkpoint does not contain, so callers can tell "missing" from "corrupt".
var ErrNotFound = errors.New("no such tensor")

// TensorInfo describes one tensor of a checkpoint.
type TensorInfo struct {
	Name  string
	Path  string // the file that holds the tensor
	Dtype Dtype
	Shape []int
	// Begin and End are the tensor's byte range relative to the start of the
	// data region (the first byte after the header), as in the header.
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// NumBytes is the size of the tensor's data.
func (t TensorInfo) NumBytes() int64 { return t.End - t.Begin }

// Reader serves a checkpoint's tensors by name. *File (one file) and *Sharded
// (several files behind an index) implement it.
type Reader interface {
	// Path names the checkpoint in errors: the file, or the index file.
	Path() string
	// Names lists every tensor, sorted.
	Names() []string
	// Info describes a tensor; the error wraps ErrNotFound if there is none.
	Info(name string) (TensorInfo, error)
	// ReadRaw returns the tensor's bytes exactly as stored (little-endian).
	ReadRaw(name string) ([]byte, error)
	// ReadFloat32 returns the tensor widened to float32 (F32, BF16, F16 only).
	ReadFloat32(name string) ([]float32, error)
	Close() error
}

// File is an open safetensors file. Only the header is held in memory;
// tensors are read on demand with ReadAt, so a File is safe for concurrent
// reads by several goroutines.
type File struct {
	path      string
	file      *os.File
	dataStart int64 // offset of the data region in the file
	tensors   map[string]TensorInfo
	names     []string
	metadata  map[string]string
}

var _ Reader = (*File)(nil)

// Open opens a safetensors file and validates its header against the file's
// size. The caller must Close it.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	sf, err := readHeader(path, f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	return sf, nil
}

// headerEntry is one tensor's header record. Pointers tell a missing field
// from a zero one.
type headerEntry struct {
	Dtype       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

func readHeader(path string, f *os.File, fileSize int64) (*File, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("safetensors: %s: "+format, append([]any{path}, args...)...)
	}
	if fileSize < 8 {
		return nil, fail("file is %d bytes, too short for the 8-byte header length (truncated?)", fileSize)
	}
	var lenBuf [8]byte
	if _, err := f.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fail("reading header length: %v", err)
	}
	headerLen := binary.LittleEndian.Uint64(lenBuf[:])
	if headerLen > uint64(fileSize-8) {
		return nil, fail("header length %d exceeds the %d bytes after the length field (truncated or not a safetensors file)", headerLen, fileSize-8)
	}
	if headerLen > maxHeaderSize {
		return nil, fail("header length %d exceeds the format's limit of %d bytes", headerLen, maxHeaderSize)
	}
	header := make([]byte, headerLen)
	if _, err := f.ReadAt(header, 8); err != nil {
		return nil, fail("reading %d-byte header: %v", headerLen, err)
	}
	dataStart := 8 + int64(headerLen)
	dataSize := fileSize - dataStart

	sf := &File{path: path, file: f, dataStart: dataStart, tensors: map[string]TensorInfo{}}
	if err := sf.parseHeader(header, dataSize); err != nil {
		return nil, fail("%v", err)
	}
	return sf, nil
}

// parseHeader decodes and validates the JSON header. Errors name the tensor;
// the caller prefixes the file.
func (sf *File) parseHeader(header []byte, dataSize int64) error {
	dec := json.NewDecoder(bytes.NewReader(header))
	if tok, err := dec.Token(); err != nil {
		return fmt.Errorf("header is not valid JSON: %v", err)
	} else if tok != json.Delim('{') {
		return fmt.Errorf("header is not a JSON object (starts with %v)", tok)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("header is not valid JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return fmt.Errorf("header is not valid JSON: key %v", tok)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("header is not valid JSON at entry %q: %v", name, err)
		}
		if _, dup := sf.tensors[name]; dup || (name == metadataKey && sf.metadata != nil) {
			return fmt.Errorf("entry %q appears twice in the header", name)
		}
		if name == metadataKey {
			if err := json.Unmarshal(raw, &sf.metadata); err != nil {
				return fmt.Errorf("%s must map strings to strings: %v", metadataKey, err)
			}
			if sf.metadata == nil {
				sf.metadata = map[string]string{}
			}
			continue
		}
		info, err := parseEntry(name, raw)
		if err != nil {
			return err
		}
		info.Path = sf.path
		sf.tensors[name] = info
		sf.names = append(sf.names, name)
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("header is not valid JSON: %v", err)
	}
	// The reference pads the header with spaces; anything else after the
	// object means the length field or the header is wrong.
	if tok, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("header has trailing data after the JSON object (%v)", tok)
	}
	sort.Strings(sf.names)
	return sf.checkLayout(dataSize)
}

func parseEntry(name string, raw json.RawMessage) (TensorInfo, error) {
	fail := func(format string, args ...any) (TensorInfo, error) {
		return TensorInfo{}, fmt.Errorf("tensor %q: "+format, append([]any{name}, args...)...)
	}
	var e headerEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return fail("malformed header entry: %v", err)
	}
	switch {
	case e.Dtype == nil:
		return fail("header entry has no dtype")
	case e.Shape == nil:
		return fail("header entry has no shape")
	case e.DataOffsets == nil:
		return fail("header entry has no data_offsets")
	}
	dtype := Dtype(*e.Dtype)
	size := dtype.Size()
	if size == 0 {
		return fail("unknown dtype %q", *e.Dtype)
	}
	offsets := *e.DataOffsets
	if len(offsets) != 2 {
		return fail("data_offsets has %d entries, want [begin, end]", len(offsets))
	}
	begin, end := offsets[0], offsets[1]
	if begin < 0 || end < 0 {
		return fail("negative data_offsets [%d, %d]", begin, end)
	}
	if end < begin {
		return fail("data_offsets [%d, %d] end before begin", begin, end)
	}
	shape := make([]int, len(*e.Shape))
	elements := uint64(1)
	overflow := false
	for i, d := range *e.Shape {
		if d < 0 || d > math.MaxInt {
			return fail("invalid dimension %d in shape %v", d, *e.Shape)
		}
		shape[i] = int(d)
		hi, lo := bits.Mul64(elements, uint64(d))
		overflow = overflow || hi != 0
		elements = lo
	}
	hi, want := bits.Mul64(elements, uint64(size))
	if overflow || hi != 0 || want > math.MaxInt64 {
		return fail("shape %v is too large", *e.Shape)
	}
	if got := uint64(end - begin); got != want {
		return fail("data_offsets [%d, %d] hold %d bytes, but shape %v of %s needs %d", begin, end, got, shape, dtype, want)
	}
	return TensorInfo{Name: name, Dtype: dtype, Shape: shape, Begin: begin, End: end}, nil
}

// checkLayout enforces what the reference implementation enforces: tensors
// tile the data region exactly, with no overlap, no gap and nothing after the
// last one. Overlap would let one tensor's write corrupt another; a gap or a
// short file means the offsets or the download are wrong.
func (sf *File) checkLayout(dataSize int64) error {
	byOffset := make([]TensorInfo, 0, len(sf.tensors))
	for _, t := range sf.tensors {
		byOffset = append(byOffset, t)
	}
	slices.SortFunc(byOffset, func(a, b TensorInfo) int {
		return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End), cmp.Compare(a.Name, b.Name))
	})
	// Overlaps first: a tensor whose offsets moved overlaps another where it
	// went, and leaves a gap where it was, between two sound neighbours; the
	// overlap names it, the gap would name a neighbour.
	var end int64
	prev := ""
	for _, t := range byOffset {
		if t.End > dataSize {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run past the end of the %d-byte data region (file truncated or offsets corrupt)", t.Name, t.Begin, t.End, dataSize)
		}
		if t.Begin < end {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap tensor %q, which ends at %d", t.Name, t.Begin, t.End, prev, end)
		}
		end = t.End
		prev = t.Name
	}
	end, prev = 0, ""
	for _, t := range byOffset {
		if t.Begin > end {
			if prev == "" {
				return fmt.Errorf("tensor %q: data_offsets [%d, %d] leave bytes [0, %d) of the data region to no tensor (the first tensor must start at 0)", t.Name, t.Begin, t.End, t.Begin)
			}
			return fmt.Errorf("bytes [%d, %d) of the data region belong to no tensor: tensor %q ends at %d, tensor %q (data_offsets [%d, %d]) starts at %d; one of their offsets is wrong",
				end, t.Begin, prev, end, t.Name, t.Begin, t.End, t.Begin)
		}
		end = t.End
		prev = t.Name
	}
	if end != dataSize {
		return fmt.Errorf("%d bytes after the last tensor (data region is %d bytes, tensors cover %d)", dataSize-end, dataSize, end)
	}
	return nil
}

// Path is the file's path as given to Open.
func (sf *File) Path() string { return sf.path }

// Names lists the tensors, sorted. The slice is the caller's to keep.
func (sf *File) Names() []string { return slices.Clone(sf.names) }

// Metadata returns a copy of the header's __metadata__ map (nil if absent).
func (sf *File) Metadata() map[string]string {
	if sf.metadata == nil {
		return nil
	}
	m := make(map[string]string, len(sf.metadata))
	for k, v := range sf.metadata {
		m[k] = v
	}
	return m
}

// Info describes a tensor. The returned shape is a copy.
func (sf *File) Info(name string) (TensorInfo, error) {
	t, ok := sf.tensors[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("safetensors: %s: tensor %q: %w", sf.path, name, ErrNotFound)
	}
	t.Shape = slices.Clone(t.Shape)
	return t, nil
}

// ReadRaw reads a tensor's bytes as stored.
func (sf *File) ReadRaw(name string) ([]byte, error) {
	t, err := sf.Info(name)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, t.NumBytes())
	if err := sf.readAt(t, buf, 0); err != nil {
		return nil, err
	}
	return buf, nil
}

// readAt fills buf from the tensor's data starting at byte off of the tensor.
func (sf *File) readAt(t TensorInfo, buf []byte, off int64) error {
	n, err := sf.file.ReadAt(buf, sf.dataStart+t.Begin+off)
	if n == len(buf) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("safetensors: %s: tensor %q: file is truncated (it shrank after it was opened)", sf.path, t.Name)
	}
	return fmt.Errorf("safetensors: %s: tensor %q: %w", sf.path, t.Name, err)
}

// readChunk bounds the scratch buffer used when widening to float32, so a
// large BF16 tensor does not need its raw bytes and its floats in memory at once.
const readChunk = 1 << 20

// ReadFloat32 reads a F32, BF16 or F16 tensor as float32 values (row-major).
func (sf *File) ReadFloat32(name string) ([]float32, error) {
	t, err := sf.Info(name)
	if err != nil {
		return nil, err
	}
	if !t.Dtype.IsFloat() {
		return nil, fmt.Errorf("safetensors: %s: tensor %q: cannot convert dtype %s to float32 (want F32, BF16 or F16)", sf.path, name, t.Dtype)
	}
	size := int64(t.Dtype.Size())
	out := make([]float32, t.NumElements())
	buf := make([]byte, min(t.NumBytes(), readChunk))
	for done := int64(0); done < t.NumBytes(); {
		chunk := buf[:min(int64(len(buf)), t.NumBytes()-done)]
		if err := sf.readAt(t, chunk, done); err != nil {
			return nil, err
		}
		decodeFloats(out[done/size:], chunk, t.Dtype)
		done += int64(len(chunk))
	}
	return out, nil
}

// decodeFloats widens the little-endian values in src into dst.
func decodeFloats(dst []float32, src []byte, dtype Dtype) {
	switch dtype {
	case F32:
		for i := range len(src) / 4 {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case BF16:
		for i := range len(src) / 2 {
			dst[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case F16:
		for i := range len(src) / 2 {
			dst[i] = HalfToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	}
}

// Close releases the file handle.
func (sf *File) Close() error {
	if err := sf.file.Close(); err != nil {
		return fmt.Errorf("safetensors: %s: %w", sf.path, err)
	}
	return nil
}
