package gpu

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"github.com/sparselora/sparselora/shaders"
)

// Const is a compile-time constant injected in front of a WGSL file as
// `const Name = Value;`. Kernels specialise on them (tile sizes, layouts) so the
// compiler folds the branches away; each distinct set compiles once per device.
type Const struct {
	Name  string
	Value string
}

// U32 and Bool make Const values.
func U32(name string, v int) Const { return Const{name, fmt.Sprintf("%du", v)} }

// Bool makes a boolean Const.
func Bool(name string, v bool) Const { return Const{name, fmt.Sprint(v)} }

// Kernel is a compiled compute pipeline with its bind group layout (group 0).
type Kernel struct {
	dev      *Device
	Name     string
	pipeline C.WGPUComputePipeline
	layout   C.WGPUBindGroupLayout
}

func constKey(file string, consts []Const) string {
	parts := make([]string, len(consts))
	for i, c := range consts {
		parts[i] = c.Name + "=" + c.Value
	}
	sort.Strings(parts)
	return file + "{" + strings.Join(parts, ",") + "}"
}

// Kernel returns the compiled kernel for the WGSL file of package shaders and the
// constants, compiling it on first use and caching it on the device. The kernel
// is compiled as the device's enable directives, the constants, then
// shaders/prelude.wgsl, then the file, each with the sections that the
// device's features select (see compileWithPrelude).
func (d *Device) Kernel(file string, consts ...Const) (*Kernel, error) {
	key := constKey(file, consts)
	d.mu.Lock()
	defer d.mu.Unlock()
	if k, ok := d.kernels[key]; ok {
		return k, nil
	}
	src, err := shaders.Source(file)
	if err != nil {
		return nil, err
	}
	k, err := d.compileWithPrelude(key, file, src, consts)
	if err != nil {
		return nil, err
	}
	d.kernels[key] = k
	return k, nil
}

// preludeFile holds the WGSL that every kernel of package shaders shares.
const preludeFile = "prelude.wgsl"

// sourcePart is one piece of an assembled kernel source: what it is called in
// error messages and how many lines it spans.
type sourcePart struct {
	name  string
	lines int
}

// compileWithPrelude compiles file's source src behind the constants and the
// shared prelude into an uncached kernel. Compiler messages give lines of the
// whole text; they are rewritten to name the part a line falls in and its line
// there ("constants:2", "prelude.wgsl:40", "gemm.wgsl:12"), so that a reported
// line is the line of the file to edit.
//
// A device with optional shader features enables them in a first part,
// "directives" (WGSL wants `enable` before any declaration), and the prelude
// and the file keep only the sections their features select (see
// selectSections), so a kernel's text on a device without the features is its
// text before they existed.
func (d *Device) compileWithPrelude(name, file, src string, consts []Const) (*Kernel, error) {
	prelude, err := shaders.Source(preludeFile)
	if err != nil {
		return nil, err
	}
	features := d.shaderFeatures()
	var b strings.Builder
	directives := 0
	for _, f := range shaderFeatureNames {
		if features[f] {
			fmt.Fprintf(&b, "enable %s;\n", f)
			directives++
		}
	}
	for _, c := range consts {
		fmt.Fprintf(&b, "const %s = %s;\n", c.Name, c.Value)
	}
	parts := []sourcePart{{"directives", directives}, {"constants", len(consts)}}
	for _, p := range []struct{ name, text string }{{preludeFile, prelude}, {file, src}} {
		if !strings.HasSuffix(p.text, "\n") {
			p.text += "\n"
		}
		text, err := selectSections(p.name, p.text, features)
		if err != nil {
			return nil, fmt.Errorf("compiling kernel %s: %w", name, err)
		}
		b.WriteString(text)
		parts = append(parts, sourcePart{p.name, strings.Count(text, "\n")})
	}
	k, err := d.CompileKernel(name, b.String())
	var werr *Error
	if errors.As(err, &werr) {
		return nil, fmt.Errorf("compiling kernel %s: %w", name, &Error{Type: werr.Type, Message: attributeLines(werr.Message, parts)})
	}
	return k, err
}

// shaderFeatureNames are the optional WGSL features that kernel sources may
// select sections on, by their WGSL `enable` names (which are also the
// adapters' feature names).
var shaderFeatureNames = []string{"subgroups"}

// FeatureUse says what the kernels use an optional adapter feature for where
// a device enables it, or "" if no kernel uses it.
func FeatureUse(feature string) string {
	if feature == "subgroups" {
		return "workgroup reductions: RMSNorm, cross-entropy mean, attention decode, row sums"
	}
	return ""
}

// shaderFeatures says which of shaderFeatureNames the device has enabled.
func (d *Device) shaderFeatures() map[string]bool {
	return map[string]bool{"subgroups": d.HasSubgroups}
}

// selectSections keeps the lines of WGSL text that features select. A section
//
//	//#if FEATURE
//	(used where the device has FEATURE)
//	//#else
//	(used where it has not; optional)
//	//#endif
//
// keeps one branch; the lines of the other and the directive lines become
// empty lines, so every kept line keeps its number in file. Sections do not
// nest; FEATURE is one of shaderFeatureNames.
func selectSections(file, text string, features map[string]bool) (string, error) {
	lines := strings.SplitAfter(text, "\n")
	open, inElse, keep := 0, false, true
	for i, line := range lines {
		directive, ok := strings.CutPrefix(strings.TrimSpace(line), "//#")
		if !ok {
			if !keep {
				lines[i] = strings.Repeat("\n", strings.Count(line, "\n"))
			}
			continue
		}
		lines[i] = strings.Repeat("\n", strings.Count(line, "\n"))
		word, arg, _ := strings.Cut(directive, " ")
		arg = strings.TrimSpace(arg)
		switch {
		case word == "if" && open == 0:
			has, known := features[arg]
			if !known {
				return "", fmt.Errorf("%s:%d: //#if %q: not a shader feature (want one of %s)", file, i+1, arg, strings.Join(shaderFeatureNames, ", "))
			}
			open, inElse, keep = i+1, false, has
		case word == "if":
			return "", fmt.Errorf("%s:%d: //#if inside the //#if of line %d (sections do not nest)", file, i+1, open)
		case word == "else" && arg == "" && open != 0 && !inElse:
			inElse, keep = true, !keep
		case word == "endif" && arg == "" && open != 0:
			open, keep = 0, true
		default:
			return "", fmt.Errorf("%s:%d: unexpected //#%s", file, i+1, directive)
		}
	}
	if open != 0 {
		return "", fmt.Errorf("%s:%d: //#if without //#endif", file, open)
	}
	return strings.Join(lines, ""), nil
}

// compilerLine matches the ":line:column" that starts a position in the WGSL
// compiler's messages (it names no file: the source is a string).
var compilerLine = regexp.MustCompile(`(^|\s):(\d+):(\d+)`)

// attributeLines rewrites each ":line:column" of a compiler message about the
// concatenation of parts to "part:line:column" with the part's own line.
func attributeLines(msg string, parts []sourcePart) string {
	return compilerLine.ReplaceAllStringFunc(msg, func(m string) string {
		sub := compilerLine.FindStringSubmatch(m)
		line, err := strconv.Atoi(sub[2])
		if err != nil {
			return m
		}
		for _, p := range parts {
			if line <= p.lines {
				return fmt.Sprintf("%s%s:%d:%s", sub[1], p.name, line, sub[3])
			}
			line -= p.lines
		}
		return m
	})
}

// CompileKernel compiles WGSL source with entry point `main` into an uncached
// kernel that the caller must Release. Compile and validation errors come back
// with the compiler's message (line and column refer to the source given here).
func (d *Device) CompileKernel(name, source string) (*Kernel, error) {
	// Dawn keeps error scopes per OS thread: push, create and pop must run on
	// one, or the compiler's error lands in no scope and is lost.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	csrc := C.CString(source)
	defer C.free(unsafe.Pointer(csrc))
	centry := C.CString("main")
	defer C.free(unsafe.Pointer(centry))

	wgsl := (*C.WGPUShaderSourceWGSL)(C.calloc(1, C.size_t(unsafe.Sizeof(C.WGPUShaderSourceWGSL{}))))
	defer C.free(unsafe.Pointer(wgsl))
	wgsl.chain.sType = C.WGPUSType_ShaderSourceWGSL
	wgsl.code = C.WGPUStringView{data: csrc, length: C.size_t(len(source))}
	mdesc := (*C.WGPUShaderModuleDescriptor)(C.calloc(1, C.size_t(unsafe.Sizeof(C.WGPUShaderModuleDescriptor{}))))
	defer C.free(unsafe.Pointer(mdesc))
	mdesc.nextInChain = &wgsl.chain
	mdesc.label = C.WGPUStringView{data: cname, length: C.size_t(len(name))}

	C.sl_wgpuDevicePushErrorScope(d.h, 3) // Internal
	C.sl_wgpuDevicePushErrorScope(d.h, 1) // Validation
	module := C.sl_wgpuDeviceCreateShaderModule(d.h, mdesc)
	var pdesc C.WGPUComputePipelineDescriptor
	pdesc.label = mdesc.label
	pdesc.compute.module = module
	pdesc.compute.entryPoint = C.WGPUStringView{data: centry, length: 4}
	pipeline := C.sl_wgpuDeviceCreateComputePipeline(d.h, &pdesc)
	verr := d.popErrorScope("compiling kernel " + name)
	ierr := d.popErrorScope("compiling kernel " + name)
	if module != nil {
		C.sl_wgpuShaderModuleRelease(module)
	}
	if verr != nil || ierr != nil || pipeline == nil {
		if pipeline != nil {
			C.sl_wgpuComputePipelineRelease(pipeline)
		}
		if verr != nil {
			return nil, verr
		}
		if ierr != nil {
			return nil, ierr
		}
		return nil, fmt.Errorf("compiling kernel %s: pipeline creation failed", name)
	}
	layout := C.sl_wgpuComputePipelineGetBindGroupLayout(pipeline, 0)
	d.live.Add(1)
	return &Kernel{dev: d, Name: name, pipeline: pipeline, layout: layout}, nil
}

// Release frees a kernel made by CompileKernel. Cached kernels are released by
// Device.Close.
func (k *Kernel) Release() { k.release() }

func (k *Kernel) release() {
	if k.pipeline == nil {
		return
	}
	if k.layout != nil {
		C.sl_wgpuBindGroupLayoutRelease(k.layout)
	}
	C.sl_wgpuComputePipelineRelease(k.pipeline)
	k.pipeline = nil
	k.dev.live.Add(-1)
}
