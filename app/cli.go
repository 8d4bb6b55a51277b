// Package app is sparselora's user-facing layer: the command-line interface and
// its subcommands. It parses flags, calls the library packages (train.New and
// train.Run for everything that trains, conformance, evaluate, infer...),
// prints their results and turns errors into exit codes; it sets up no GPU
// work of its own.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/sparselora/sparselora/gpu"
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"demo", "the built-in default: fine-tune the tiny model dense and sparse on the built-in task, one table", runDemo},
		{"train", "fine-tune a LoRA adapter (SparseLoRA) on a JSONL data set", runTrain},
		{"generate", "generate text with a model and an optional adapter (prompt, file or interactive chat)", runGenerate},
		{"eval", "measure loss/perplexity or exact-match accuracy on a JSONL data set", runEval},
		{"devices", "list WebGPU adapters with backend, driver, features and limits", runDevices},
		{"bench", "benchmark GEMMs (bench gemm) and training steps (bench step)", runBench},
		{"inspect", "show a checkpoint's architecture, size and training memory", runInspect},
		{"plan", "predict a training run's peak GPU memory by part (and what fits)", runPlan},
		{"conformance", "check forward, backward and AdamW against a Hugging Face reference", runConformance},
		{"plot", "draw a training run's charts (PNG) and summary.md from its metrics.jsonl", runPlot},
		{"merge", "fold a LoRA adapter into its base model and write an HF checkpoint", runMerge},
		{"export", "write a model (adapter merged in) or an adapter as GGUF for llama.cpp, Ollama, LM Studio", runExport},
		{"quantize", "write an MLX-format 4/8-bit quantized copy of a checkpoint and print each weight's error", runQuantize},
		{"tokenize", "tokenize JSONL text/chat messages or decode ids with a model's tokenizer", runTokenize},
		{"data", "generate the built-in task and pretraining corpus, or train a BPE tokenizer", runData},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sparselora <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `sparselora <command> --help` for a command's flags.")
}

// errUsage marks errors already explained by a usage message.
var errUsage = errors.New("usage")

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			fmt.Fprintf(stderr, "sparselora %s: interrupted\n", c.name)
			return ExitInterrupted
		case errors.Is(err, errStoppedWithJob):
			// Another process of an mpirun job was interrupted.
			fmt.Fprintf(stderr, "sparselora %s: interrupted\n", c.name)
			return ExitInterrupted
		}
		fmt.Fprintf(stderr, "sparselora %s: %v\n", c.name, err)
		return 1
	}
	fmt.Fprintf(stderr, "sparselora: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// newFlags makes a flag set whose parse errors and --help print to stderr/stdout.
func newFlags(name, synopsis string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "usage: sparselora %s\n\nflags:\n", synopsis)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	return fs
}

// parseFlags parses args into fs, accepting flags after positional arguments
// too (`inspect DIR --bf16`): Go's flag package stops at the first positional
// argument, so the remainder is parsed again after each one. A "--" ends the
// flags; everything after it is positional. It accepts any number of
// positional arguments (fs.Args() holds them); commands that take a fixed
// number call parseCommand instead.
func parseFlags(fs *flag.FlagSet, args []string) error {
	// The flag package prints the usage for --help and after a parse error
	// alike; the full flag list belongs on stdout for --help only, and an
	// error gets a one-line hint on stderr instead.
	usage := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = usage }()
	var positionals []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				usage()
				return err
			}
			fmt.Fprintf(fs.Output(), "run `sparselora %s --help` for the flags\n", fs.Name())
			return errUsage
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if len(rest) == 0 || (consumed > 0 && args[consumed-1] == "--") {
			positionals = append(positionals, rest...)
			break
		}
		positionals = append(positionals, rest[0])
		args = rest[1:]
	}
	// Parse with the terminator so that fs.Args() reports exactly the
	// positional arguments; nothing is left for it to set.
	return fs.Parse(append([]string{"--"}, positionals...))
}

// parseCommand is parseFlags for a command that takes exactly the positional
// arguments named in positionals (none for most commands): a missing or a
// stray one is a usage error that says which, rather than being ignored (a
// stray word used to end flag parsing and silently drop every flag after it).
func parseCommand(fs *flag.FlagSet, args []string, positionals ...string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	got := fs.Args()
	switch {
	case len(got) > len(positionals) && len(positionals) == 0:
		fmt.Fprintf(fs.Output(), "sparselora %s: unexpected argument %q (this command takes only flags; run with --help)\n", fs.Name(), got[0])
		return errUsage
	case len(got) > len(positionals):
		fmt.Fprintf(fs.Output(), "sparselora %s: unexpected argument %q after %s (run with --help)\n", fs.Name(), got[len(positionals)], strings.Join(positionals, " "))
		return errUsage
	case len(got) < len(positionals):
		fmt.Fprintf(fs.Output(), "sparselora %s: missing %s (run with --help)\n", fs.Name(), strings.Join(positionals[len(got):], " "))
		return errUsage
	}
	return nil
}

// deviceFlags are the adapter-selection flags shared by commands that use a GPU.
type deviceFlags struct {
	backend string
	adapter string
	power   string
	toggles string
	// noSubgroups turns the subgroup reductions off (gpu.Options.NoSubgroups).
	noSubgroups bool
}

func (f *deviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.backend, "backend", "", "WebGPU backend: vulkan, metal, d3d12 (default: any)")
	// --gpu, not --adapter: "adapter" means the LoRA adapter in the commands
	// that train and use one.
	fs.StringVar(&f.adapter, "gpu", "", "WebGPU adapter: its index or a part of its name, as sparselora devices lists them")
	fs.StringVar(&f.power, "power", "high", "power preference when several GPUs are present: high or low")
	fs.StringVar(&f.toggles, "toggles", "", "comma-separated Dawn toggles to enable (e.g. disable_robustness)")
	fs.BoolVar(&f.noSubgroups, "no-subgroups", false, "do not use the adapter's subgroup operations in kernel reductions (results then match an adapter without them)")
}

func (f *deviceFlags) options() (gpu.Options, error) {
	opts := gpu.DefaultOptions()
	if f.backend != "" {
		b, err := gpu.ParseBackend(f.backend)
		if err != nil {
			return opts, err
		}
		opts.Backend = b
	}
	if f.adapter != "" {
		if i, err := strconv.Atoi(f.adapter); err == nil {
			if i < 0 {
				return opts, fmt.Errorf("--gpu %d: want an adapter index (0, 1, ...) or a part of its name; see sparselora devices", i)
			}
			opts.Adapter = i
		} else {
			opts.AdapterName = f.adapter
		}
	}
	switch f.power {
	case "high":
		opts.Power = gpu.PowerHighPerformance
	case "low":
		opts.Power = gpu.PowerLow
	default:
		return opts, fmt.Errorf("--power %q: want high or low", f.power)
	}
	if f.toggles != "" {
		opts.Toggles = strings.Split(f.toggles, ",")
	}
	opts.NoSubgroups = f.noSubgroups
	return opts, nil
}

// closeUnlessInterrupted runs closeDev unless ctx has ended. Destroying a
// device waits for the work already queued on it to finish (tens of seconds
// for a large GEMM on a CPU driver); once the user has interrupted, the process
// is about to exit, which frees the device at once. Use it as
// `defer closeUnlessInterrupted(ctx, closeDev)`.
func closeUnlessInterrupted(ctx context.Context, closeDev func()) {
	if ctx.Err() == nil {
		closeDev()
	}
}

// open creates an instance and a device; close both with the returned func.
func (f *deviceFlags) open() (*gpu.Device, func(), error) {
	opts, err := f.options()
	if err != nil {
		return nil, nil, err
	}
	in, err := gpu.NewInstance()
	if err != nil {
		return nil, nil, err
	}
	dev, err := in.OpenDevice(opts)
	if err != nil {
		in.Close()
		return nil, nil, err
	}
	return dev, func() { dev.Close(); in.Close() }, nil
}
