# sparselora: see README.md. `make setup` is idempotent and quiet when done.
GO ?= go
BENCH_SHAPES ?= 1024x1024x1024,512x2752x1024

.PHONY: setup build build-headless run test bench-gemm fuzz clean

setup:
	@bash scripts/setup.sh

# With the live-metrics window (GLFW + OpenGL: needs the X11/GL development
# packages that setup installs, and libX11 at run time).
build: setup
	$(GO) build -o bin/sparselora ./cmd/sparselora

# Without the window, for servers without X libraries: links neither GLFW nor
# OpenGL; `train` trains headless and says so.
build-headless: setup
	$(GO) build -tags nowindow -o bin/sparselora ./cmd/sparselora

# The main job on the built-in default: list the adapters, then benchmark dense and
# gathered GEMMs on the best one (sizes that finish in a minute on a CPU driver).
run: build
	bin/sparselora devices
	bin/sparselora bench gemm --shapes $(BENCH_SHAPES) --gather m=0.75,n=0.25

test: setup
	$(GO) vet ./...
	$(GO) test ./...

# The issue's reference shapes; minutes on lavapipe, milliseconds on a GPU.
bench-gemm: build
	bin/sparselora bench gemm --shapes 4096x4096x4096,2048x11008x4096 --gather m=0.75,n=0.25

# Each fuzz target for FUZZTIME (new crashers land in the package's
# testdata/fuzz, where `go test` replays them); the checked-in seeds run in `make test`.
FUZZTIME ?= 30s
FUZZ_TARGETS = ./model/safetensors:FuzzOpen ./model/safetensors:FuzzOpenSharded ./model:FuzzParseConfig \
	./lora:FuzzParseAdapterConfig ./lora:FuzzParsePEFTKey ./predictor:FuzzParseSparsityConfig
fuzz: setup
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$${t#*:}$$" -fuzztime=$(FUZZTIME) $${t%%:*}; \
	done

clean:
	rm -rf bin
