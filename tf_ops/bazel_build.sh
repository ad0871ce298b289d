#!/usr/bin/env bash
# Builds the custom ops (CPU only) with Bazel, offline, into build/bazel/: _projection_loss_ops.so (Projection Loss)
# and _ransac_pnp_ops.so (RANSAC-PnP).
# What `make bazel-build-ops` runs. Details: docs/building.md, "Bazel build".
#
# Environment:
#   PYTHON_BIN_PATH          python with tensorflow (default: <repo>/.venv/bin/python)
#   BAZEL                    bazel binary (default: `bazel` on PATH; installed from Debian's bazel-bootstrap if missing)
#   BAZEL_OUTPUT_USER_ROOT   Bazel's cache/output root (default: /tmp/synthpose-bazel-<uid>); kept between runs
#                            so a rebuild is incremental. Delete it for a cold build.
#   BAZEL_JOBS               parallel jobs (default: number of CPUs)
#   BAZEL_KEEP_SERVER=1      leave the Bazel server running afterwards (default: shut it down)
#   BAZEL_BUILD_FLAGS        extra `bazel build` flags, e.g. "--explain=/tmp/explain.txt --verbose_explanations"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# package:library pairs; each library lands in build/bazel/<library>.
OPS=("projection_loss:_projection_loss_ops.so" "ransac_pnp:_ransac_pnp_ops.so")
TARGETS=()
for op in "${OPS[@]}"; do TARGETS+=("//tf_ops/${op%%:*}:${op#*:}"); done
OUT_DIR="$ROOT/build/bazel"

die() { echo "bazel_build.sh: error: $*" >&2; exit 1; }
log() { echo "bazel_build.sh: $*"; }

# ---- bazel itself
BAZEL="${BAZEL:-bazel}"
if ! command -v "$BAZEL" >/dev/null 2>&1; then
  log "'$BAZEL' not found; installing Debian's bazel-bootstrap (Bazel 4.2.3)"
  command -v apt-get >/dev/null 2>&1 || die "no bazel and no apt-get: install Bazel 4.2.x yourself (or set BAZEL=/path/to/bazel)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "installing bazel-bootstrap needs root or sudo; run: apt-get install -y bazel-bootstrap"
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends bazel-bootstrap \
    || die "apt-get install bazel-bootstrap failed"
  BAZEL=bazel
  command -v "$BAZEL" >/dev/null 2>&1 || die "bazel-bootstrap installed but 'bazel' is still not on PATH"
fi

# ---- python with tensorflow (read by third_party/tf/tf_configure.bzl)
PYTHON_BIN_PATH="${PYTHON_BIN_PATH:-$ROOT/.venv/bin/python}"
# Absolute, but not through symlinks (a venv's bin/python is a symlink to the base interpreter).
case "$PYTHON_BIN_PATH" in
  /*) ;;
  */*) PYTHON_BIN_PATH="$PWD/$PYTHON_BIN_PATH" ;;
  *) PYTHON_BIN_PATH="$(command -v "$PYTHON_BIN_PATH" || echo "$PYTHON_BIN_PATH")" ;;
esac
export PYTHON_BIN_PATH
[ -x "$PYTHON_BIN_PATH" ] || die "python '$PYTHON_BIN_PATH' not found; run 'make setup' or set PYTHON_BIN_PATH"
# Locating tensorflow without importing it (an import costs ~5 s); third_party/tf/tf_configure.bzl imports it
# only when this fingerprint (or the python) changed since the last run.
TF_DIR="$("$PYTHON_BIN_PATH" -c 'import importlib.util as u; s = u.find_spec("tensorflow"); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else "")' 2>/dev/null)" \
  || die "'$PYTHON_BIN_PATH' does not run; run 'make setup' or set PYTHON_BIN_PATH"
[ -n "$TF_DIR" ] || die "tensorflow is not installed for '$PYTHON_BIN_PATH'; run 'make setup' or set PYTHON_BIN_PATH"
TF_LIB_FILE="$(ls "$TF_DIR"/libtensorflow_framework.so* 2>/dev/null | head -1)"
[ -n "$TF_LIB_FILE" ] || die "no libtensorflow_framework.so* in $TF_DIR"
export SYNTHPOSE_TF_STAMP="$TF_LIB_FILE:$(stat -L -c '%s:%Y' "$TF_LIB_FILE")"

for f in tf_ops/projection_loss/core/projection_loss_core.cc tf_ops/projection_loss/core/projection_loss_core.h \
         tf_ops/projection_loss/cc/ops/projection_loss_ops.cc tf_ops/projection_loss/cc/kernels/projection_loss_kernels.cc \
         tf_ops/ransac_pnp/core/ransac_pnp_core.h tf_ops/ransac_pnp/core/ransac_pnp_core.cc \
         tf_ops/ransac_pnp/cc/ops/ransac_pnp_ops.cc tf_ops/ransac_pnp/cc/kernels/ransac_pnp_kernels.cc; do
  [ -f "$f" ] || die "source $f is missing"
done

# ---- run bazel
USER_ROOT="${BAZEL_OUTPUT_USER_ROOT:-/tmp/synthpose-bazel-$(id -u)}"
mkdir -p "$USER_ROOT"
STARTUP=(--output_user_root="$USER_ROOT" --max_idle_secs=60)
JOBS="${BAZEL_JOBS:-$(nproc 2>/dev/null || echo 2)}"
# --symlink_prefix=/ : no bazel-* symlinks in the work tree (tools that walk the tree would follow them).
BUILD_FLAGS=(--jobs="$JOBS" --symlink_prefix=/ --repo_env=PYTHON_BIN_PATH="$PYTHON_BIN_PATH"
             --repo_env=SYNTHPOSE_TF_STAMP="$SYNTHPOSE_TF_STAMP")

shutdown_server() {
  if [ "${BAZEL_KEEP_SERVER:-0}" != "1" ]; then
    "$BAZEL" "${STARTUP[@]}" shutdown >/dev/null 2>&1 || true
  fi
}
trap shutdown_server EXIT

log "bazel: $(command -v "$BAZEL") ($("$BAZEL" "${STARTUP[@]}" --version 2>/dev/null | head -1 || true)), output root $USER_ROOT, python $PYTHON_BIN_PATH"
start=$(date +%s)
read -r -a EXTRA_FLAGS <<< "${BAZEL_BUILD_FLAGS:-}"
if ! "$BAZEL" "${STARTUP[@]}" build "${BUILD_FLAGS[@]}" ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"} "${TARGETS[@]}"; then
  die "bazel build ${TARGETS[*]} failed (see above). Note: the build is offline by design; an error about a download
means something outside third_party/ was referenced. A stale output root can be removed: rm -rf '$USER_ROOT'"
fi
end=$(date +%s)

BIN="$("$BAZEL" "${STARTUP[@]}" info "${BUILD_FLAGS[@]}" bazel-bin 2>/dev/null)" || die "'bazel info bazel-bin' failed"
mkdir -p "$OUT_DIR"
for op in "${OPS[@]}"; do
  SO="$BIN/tf_ops/${op%%:*}/${op#*:}"
  OUT="$OUT_DIR/${op#*:}"
  [ -f "$SO" ] || die "bazel reported success but $SO does not exist"
  rm -f "$OUT"
  cp "$SO" "$OUT"
  chmod u+w,a+r "$OUT"
  log "built $OUT"
done
log "bazel build took $((end - start)) s"
