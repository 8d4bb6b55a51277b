package gguf

import (
	"fmt"
	"strings"
)

// ValueType is the type tag of a metadata value.
type ValueType uint32

// The GGUF metadata value types.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = map[ValueType]string{
	TypeUint8: "u8", TypeInt8: "i8", TypeUint16: "u16", TypeInt16: "i16", TypeUint32: "u32",
	TypeInt32: "i32", TypeFloat32: "f32", TypeBool: "bool", TypeString: "string", TypeArray: "array",
	TypeUint64: "u64", TypeInt64: "i64", TypeFloat64: "f64",
}

func (t ValueType) String() string {
	if s, ok := valueTypeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// scalarSize is the encoded size of a fixed-size value type (0 for string
// and array).
func (t ValueType) scalarSize() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// TensorType is a ggml tensor type (enum ggml_type).
type TensorType uint32

// The ggml tensor types this package knows the block layout of. Only F32,
// F16, BF16, Q8_0, Q4_0 and Q4_1 can be decoded; the others can be listed
// (and are refused by name where their values are needed).
const (
	F32     TensorType = 0
	F16     TensorType = 1
	Q4_0    TensorType = 2
	Q4_1    TensorType = 3
	Q5_0    TensorType = 6
	Q5_1    TensorType = 7
	Q8_0    TensorType = 8
	Q8_1    TensorType = 9
	Q2_K    TensorType = 10
	Q3_K    TensorType = 11
	Q4_K    TensorType = 12
	Q5_K    TensorType = 13
	Q6_K    TensorType = 14
	Q8_K    TensorType = 15
	IQ2_XXS TensorType = 16
	IQ2_XS  TensorType = 17
	IQ3_XXS TensorType = 18
	IQ1_S   TensorType = 19
	IQ4_NL  TensorType = 20
	IQ3_S   TensorType = 21
	IQ2_S   TensorType = 22
	IQ4_XS  TensorType = 23
	I8      TensorType = 24
	I16     TensorType = 25
	I32     TensorType = 26
	I64     TensorType = 27
	F64     TensorType = 28
	IQ1_M   TensorType = 29
	BF16    TensorType = 30
	TQ1_0   TensorType = 34
	TQ2_0   TensorType = 35
	MXFP4   TensorType = 39
)

// typeTraits is a ggml type's name and block layout: blockSize elements
// take typeSize bytes (ggml.c's type_traits).
type typeTraits struct {
	name      string
	blockSize int
	typeSize  int
}

var tensorTypes = map[TensorType]typeTraits{
	F32: {"F32", 1, 4}, F16: {"F16", 1, 2}, BF16: {"BF16", 1, 2}, F64: {"F64", 1, 8},
	I8: {"I8", 1, 1}, I16: {"I16", 1, 2}, I32: {"I32", 1, 4}, I64: {"I64", 1, 8},
	Q4_0: {"Q4_0", 32, 18}, Q4_1: {"Q4_1", 32, 20}, Q5_0: {"Q5_0", 32, 22}, Q5_1: {"Q5_1", 32, 24},
	Q8_0: {"Q8_0", 32, 34}, Q8_1: {"Q8_1", 32, 36},
	Q2_K: {"Q2_K", 256, 84}, Q3_K: {"Q3_K", 256, 110}, Q4_K: {"Q4_K", 256, 144}, Q5_K: {"Q5_K", 256, 176},
	Q6_K: {"Q6_K", 256, 210}, Q8_K: {"Q8_K", 256, 292},
	IQ2_XXS: {"IQ2_XXS", 256, 66}, IQ2_XS: {"IQ2_XS", 256, 74}, IQ3_XXS: {"IQ3_XXS", 256, 98},
	IQ1_S: {"IQ1_S", 256, 50}, IQ4_NL: {"IQ4_NL", 32, 18}, IQ3_S: {"IQ3_S", 256, 110},
	IQ2_S: {"IQ2_S", 256, 82}, IQ4_XS: {"IQ4_XS", 256, 136}, IQ1_M: {"IQ1_M", 256, 56},
	TQ1_0: {"TQ1_0", 256, 54}, TQ2_0: {"TQ2_0", 256, 66}, MXFP4: {"MXFP4", 32, 17},
}

// Known says whether this package knows t's block layout.
func (t TensorType) Known() bool { _, ok := tensorTypes[t]; return ok }

func (t TensorType) String() string {
	if tt, ok := tensorTypes[t]; ok {
		return tt.name
	}
	return fmt.Sprintf("ggml type %d", uint32(t))
}

// BlockSize is the number of elements one block of t holds (1 for plain
// types; 0 for an unknown type).
func (t TensorType) BlockSize() int { return tensorTypes[t].blockSize }

// Decodable says whether ReadFloat32 can decode tensors of type t.
func (t TensorType) Decodable() bool {
	switch t {
	case F32, F16, BF16, Q8_0, Q4_0, Q4_1:
		return true
	}
	return false
}

// DecodableTypes names the types ReadFloat32 decodes, for error messages.
const DecodableTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_1"

// ParseTensorType maps a type name (as String prints it, any case) to its type.
func ParseTensorType(name string) (TensorType, bool) {
	for t, tt := range tensorTypes {
		if strings.EqualFold(tt.name, name) {
			return t, true
		}
	}
	return 0, false
}

// RowBytes is the byte size of n elements of type t, or an error when t is
// unknown or n is not a whole number of blocks.
func (t TensorType) RowBytes(n int64) (int64, error) {
	tt, ok := tensorTypes[t]
	if !ok {
		return 0, fmt.Errorf("unknown tensor type %s", t)
	}
	if n%int64(tt.blockSize) != 0 {
		return 0, fmt.Errorf("%s holds blocks of %d elements; a row of %d is not a whole number of blocks", tt.name, tt.blockSize, n)
	}
	return n / int64(tt.blockSize) * int64(tt.typeSize), nil
}
