package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/sparselora/sparselora/gpu"
)

func runDevices(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices", "devices [--json]", stdout, stderr)
	asJSON := fs.Bool("json", false, "print the adapters as JSON")
	if err := parseCommand(fs, args); err != nil {
		return err
	}
	in, err := gpu.NewInstance()
	if err != nil {
		return err
	}
	defer in.Close()
	adapters := in.Adapters()
	usable := 0
	for _, a := range adapters {
		if a.Backend != gpu.BackendNull {
			usable++
		}
	}
	if *asJSON {
		out := struct {
			Library  string            `json:"library"`
			Adapters []gpu.AdapterInfo `json:"adapters"`
		}{in.LibraryPath(), adapters}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		printAdapters(stdout, in.LibraryPath(), adapters)
	}
	if usable == 0 {
		return fmt.Errorf("%w: %s", gpu.ErrNoAdapter, gpu.NullAdapterHelp)
	}
	return nil
}

func printAdapters(w io.Writer, lib string, adapters []gpu.AdapterInfo) {
	fmt.Fprintf(w, "WebGPU library: %s\n\n", lib)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDEVICE\tVENDOR\tBACKEND\tTYPE\tDRIVER")
	for _, a := range adapters {
		name := a.Name()
		if a.Backend == gpu.BackendNull {
			name += "  (unusable: Null backend computes nothing)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", a.Index, name, a.Vendor, a.Backend, a.Type, a.Description)
	}
	tw.Flush()
	for _, a := range adapters {
		l := a.Limits
		fmt.Fprintf(w, "\n[%d] %s\n", a.Index, a.Name())
		fmt.Fprintf(w, "  subgroup size %d-%d; max buffer %s, max storage binding %s, workgroup memory %s, %d invocations/workgroup, %d storage buffers/stage\n",
			a.SubgroupMin, a.SubgroupMax, bytesString(l.MaxBufferSize), bytesString(l.MaxStorageBufferBindingSize),
			bytesString(uint64(l.MaxComputeWorkgroupStorageSize)), l.MaxComputeInvocationsPerWorkgroup, l.MaxStorageBuffersPerShaderStage)
		if a.MemoryBytes > 0 {
			fmt.Fprintf(w, "  memory: %s (largest device-local heap; the default --memory-limit of train)\n", memString(a.MemoryBytes))
		}
		fmt.Fprintf(w, "  features: %s\n", strings.Join(a.Features, " "))
		fmt.Fprintf(w, "  GPU-class paths: %s\n", gpuClassFeatures(a))
	}
}

// gpuClassFeatures says which of the features that faster kernel paths
// use or could use the adapter exposes, and what the kernels use each for
// (gpu.FeatureUse): 16-bit float arithmetic, subgroup operations and subgroup
// matrices (tensor cores, through Dawn's experimental feature, which may also
// need its allow_unsafe_apis toggle).
func gpuClassFeatures(a gpu.AdapterInfo) string {
	var parts []string
	for _, f := range []string{"shader-f16", "subgroups", "chromium-experimental-subgroup-matrix"} {
		state := "no"
		if slices.Contains(a.Features, f) {
			state = "yes"
		}
		use := "no kernel uses it"
		if u := gpu.FeatureUse(f); u != "" {
			use = "used for " + u
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", f, state, use))
	}
	return strings.Join(parts, "; ")
}

// reductionPath says which path the kernels' workgroup reductions take on
// dev, for the timings that benchmarks print.
func reductionPath(dev *gpu.Device) string {
	switch {
	case dev.HasSubgroups:
		return "subgroup reductions"
	case dev.SubgroupsUnused != "":
		return "workgroup-tree reductions (subgroups " + dev.SubgroupsUnused + ")"
	}
	return "workgroup-tree reductions (no subgroups)"
}

func bytesString(n uint64) string {
	switch {
	case n >= 1<<40:
		return fmt.Sprintf("%.0f TiB", float64(n)/(1<<40))
	case n >= 1<<30:
		return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
