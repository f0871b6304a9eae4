#!/usr/bin/env bash
# Builds the GPU binaries on this x86-64 machine (the CUDA toolkit compiles without a GPU) and packs them,
# with the non-system shared libraries they load, into .gpu/ for scripts/gpu_check.sh on the device machine.
# Open MPI comes along too (its plugins, mpirun, orted and help texts, in .gpu/openmpi): the NCCL transport's
# processes then start the same way whatever MPI the device machine has, or none. NCCL does not (~200 MiB): the
# device machine's own is loaded at run time (EPLAB_NCCL_LIBRARY names another).
#   scripts/gpu_pack.sh [OUTDIR=.gpu]        (env: BUILD=build-gpu, JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
OUTDIR=${1:-.gpu}
JOBS=${JOBS:-2}

cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLAB_WERROR=ON -DEPLAB_WITH_SIMGRID=OFF \
  -DEPLAB_WITH_PYTHON=OFF -DEPLAB_WITH_CUDA=ON >/dev/null
ninja -C "$BUILD" -j"$JOBS" kernels_test nccl_test fabric_conformance_test eplab_cli gpu_bench

bins=("$BUILD/bin/kernels_test" "$BUILD/bin/nccl_test" "$BUILD/tests/fabric/fabric_conformance_test"
  "$BUILD/bin/eplab" "$BUILD/bin/gpu_bench")
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/lib"
for b in "${bins[@]}"; do
  # Symbols are for debugging here, not there; stripping keeps the carried folder well under its limit.
  strip --strip-unneeded -o "$OUTDIR/$(basename "$b")" "$b"
done
cp scripts/gpu_check.sh "$OUTDIR/"

# Open MPI as this machine has it (the libmpi eplab links): plugins, launcher, daemon, help texts. gpu_check.sh
# points Open MPI at them (OMPI_MCA_mca_base_component_path, OPAL_PKGDATADIR).
ompi_path() { ompi_info --path "$1" --parsable | sed -n "s/^path:$1://p"; }
libs=()
if command -v ompi_info >/dev/null; then
  mkdir -p "$OUTDIR/openmpi/plugins" "$OUTDIR/openmpi/bin" "$OUTDIR/openmpi/share"
  cp -L "$(ompi_path pkglibdir)"/*.so "$OUTDIR/openmpi/plugins/"
  cp -rL "$(ompi_path pkgdatadir)"/. "$OUTDIR/openmpi/share/"
  cp -L "$(command -v orterun || command -v mpirun)" "$OUTDIR/openmpi/bin/mpirun"
  cp -L "$(command -v orted)" "$OUTDIR/openmpi/bin/orted"
  libs=("$OUTDIR/openmpi/bin/mpirun" "$OUTDIR/openmpi/bin/orted" "$OUTDIR"/openmpi/plugins/*.so)
else
  echo "gpu_pack: no ompi_info here: .gpu carries no Open MPI, and gpu_check.sh's NCCL steps need the device's" >&2
fi

# Libraries the device machine's own system provides (or must: the driver) stay behind; the rest travel.
# libstdc++/libgcc_s stay too: the device image's GCC runtime is at least as new as Debian 12's.
system_lib='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libnvidia|libnccl)'
for b in "${bins[@]}" "${libs[@]}"; do
  if ldd "$b" | grep -q 'not found' && [[ $b != */openmpi/plugins/* ]]; then
    echo "gpu_pack: $b has unresolved libraries here:" >&2
    ldd "$b" | grep 'not found' >&2
    exit 1
  fi
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if [[ ! $name =~ $system_lib ]]; then cp -L -n "$path" "$OUTDIR/lib/$name"; fi
  done
done

size_kib=$(du -sk "$OUTDIR" | cut -f1)
echo "gpu_pack: $OUTDIR is $((size_kib / 1024)) MiB:"
ls -la "$OUTDIR" "$OUTDIR/lib"
if ((size_kib > 60 * 1024)); then
  echo "gpu_pack: $OUTDIR exceeds 60 MiB; the device tool carries 64 MiB at most" >&2
  exit 1
fi

# The folder is a build product: keep it out of git without touching the shared .gitignore.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$OUTDIR/" "$exclude" 2>/dev/null || echo "/$OUTDIR/" >>"$exclude"
echo "gpu_pack: done; on the GPU machine run: $OUTDIR/gpu_check.sh $OUTDIR"
