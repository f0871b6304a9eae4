#!/usr/bin/env bash
# First of README's two commands: installs the Debian packages eplab needs that are missing, configures and
# builds it, then runs the main job (`eplab run`, the default simulation). Arguments go to `eplab run`.
# --no-run stops after the build (the test command uses it).
set -euo pipefail
cd "$(dirname "$0")/.."

run_main=1
if [[ "${1:-}" == "--no-run" ]]; then
  run_main=0
  shift
fi

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/deps.txt
if ((${#missing[@]})); then
  echo "eplab setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3 runs the bindings and notebooks, whatever python3 comes first on PATH.
mkdir -p build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLAB_WERROR=ON -DPython_EXECUTABLE=/usr/bin/python3 \
  ${EPLAB_CMAKE_ARGS:-} >build/configure.log || { cat build/configure.log; exit 1; }
cmake --build build -j"$(nproc)"

if ((run_main)); then
  ./build/bin/eplab run "$@"
fi
