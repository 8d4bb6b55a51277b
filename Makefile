# sparselora: see README.md. `make setup` is idempotent and quiet when done.
GO ?= go
BENCH_SHAPES ?= 1024x1024x1024,512x2752x1024

.PHONY: setup build build-headless run base-model install bench test bench-gemm fuzz clean

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

# The main job on the built-in default: fine-tune the tiny base model (models/tiny) on the
# built-in task with dense LoRA and with SparseLoRA, and print one table (sparselora demo).
run: build
	bin/sparselora demo

# Rebuild models/tiny from nothing with sparselora itself: a generated corpus, a BPE
# tokenizer trained on it, and full-parameter pretraining (tens of minutes on lavapipe).
base-model: build
	bash scripts/base-model.sh

# The binary and the WebGPU library side by side under PREFIX: runs from any directory.
PREFIX ?= /usr/local
install: build
	install -d $(PREFIX)/bin $(PREFIX)/lib/sparselora
	install -m 755 bin/sparselora $(PREFIX)/bin/sparselora
	install -m 644 .cache/dawn/*/*webgpu* $(PREFIX)/lib/sparselora/

# GEMM timings on the best adapter (sizes that finish in a minute on a CPU driver).
bench: build
	bin/sparselora devices
	bin/sparselora bench gemm --shapes $(BENCH_SHAPES) --gather m=0.75,n=0.25

# The kernel tests run twice: on the adapter's features (subgroup reductions
# where it has them), then on the workgroup-tree reductions of adapters
# without subgroups (the packages whose tests open their device with gputest.Main).
test: setup
	$(GO) vet ./...
	$(GO) test -timeout 30m ./...
	SPARSELORA_TEST_NO_SUBGROUPS=1 $(GO) test -count=1 -timeout 30m ./gpu ./model ./optim ./lora ./predictor ./full ./train

# The issue's reference shapes; minutes on lavapipe, milliseconds on a GPU.
bench-gemm: build
	bin/sparselora bench gemm --shapes 4096x4096x4096,2048x11008x4096 --gather m=0.75,n=0.25

# Each fuzz target for FUZZTIME (new crashers land in the package's
# testdata/fuzz, where `go test` replays them); the checked-in seeds run in `make test`.
FUZZTIME ?= 30s
FUZZ_TARGETS = ./model/safetensors:FuzzOpen ./model/safetensors:FuzzOpenSharded ./model:FuzzParseConfig \
	./lora:FuzzParseAdapterConfig ./lora:FuzzParsePEFTKey ./predictor:FuzzParseSparsityConfig \
	./tokenizer:FuzzLoad ./tokenizer:FuzzChatTemplate ./data:FuzzLoad \
	./train:FuzzParseState ./train:FuzzKeptMetrics ./plot:FuzzParseMetrics ./model/gguf:FuzzOpen
fuzz: setup
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$${t#*:}$$" -fuzztime=$(FUZZTIME) $${t%%:*}; \
	done

clean:
	rm -rf bin
