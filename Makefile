# sparselora: see README.md. `make setup` is idempotent and quiet when done.
GO ?= go
BENCH_SHAPES ?= 1024x1024x1024,512x2752x1024

.PHONY: setup build run test bench-gemm clean

setup:
	@bash scripts/setup.sh

build: setup
	$(GO) build -o bin/sparselora ./cmd/sparselora

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

clean:
	rm -rf bin
