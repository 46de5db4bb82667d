#!/usr/bin/env bash
# `make test-pi`: the device package on an emulated Raspberry Pi 4 (Cortex-A72) and Pi 5
# (Cortex-A76), installed and run the way a Pi owner would (docs/runtime.md, "The Pi in CI").
#
#   tools/pi/run.sh [CPU ...]        default: cortex-a72 cortex-a76
#
# 1. host tools from the Debian registry (qemu-user-static, the aarch64 cross compiler), if missing;
# 2. an arm64 Debian 12 sysroot with Python 3.11 (tools/pi/sysroot.sh), cached in $PI_CACHE;
# 3. per CPU: `qemu-aarch64-static -cpu CPU -L SYSROOT` runs Python 3.11; a venv, then
#    `pip install .` (PyPI's aarch64 wheels: numpy 2; the C kernels built by the cross compiler
#    with flags for that CPU), as on a Pi;
# 4. per CPU: `edge-sdfa finetune --json` (C kernels, or the sets in $PI_KERNELS, e.g. "numpy c":
#    the numpy set's whole job takes ~150 s under emulation, and the kernel tests below already run
#    it against C on the emulated CPU), `edge-sdfa predict --json` and the kernel bit-exactness tests
#    under emulation; the committed head weights must equal the x86 run's, byte for byte.
# Everything is cached under $PI_CACHE (default .cache/pi, git-ignored); a second run reuses it.
# If the registries cannot be reached the run says SKIPPED (exit 0; exit 1 with PI_REQUIRED=1).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=$(realpath -m "${PI_CACHE:-$REPO/.cache/pi}")
CPUS=("${@:-cortex-a72}")
[[ $# -eq 0 ]] && CPUS=(cortex-a72 cortex-a76)
HOST_PY=${PI_HOST_PYTHON:-$REPO/.venv/bin/python}
[[ -x "$HOST_PY" ]] || HOST_PY=python3
T0=$(date +%s)
log() { echo "pi: $*" >&2; }
skip() {
  echo "test-pi: SKIPPED: $*" >&2
  [[ "${PI_REQUIRED:-0}" == 1 ]] && exit 1
  exit 0
}

# ---- 1. host tools ------------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if ((${#need[@]})); then
  command -v apt-get >/dev/null || skip "needs ${need[*]} and this is not a Debian/Ubuntu host"
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  log "installing ${need[*]} from the Debian registry"
  $SUDO apt-get update -q >&2 || skip "the Debian registry is unreachable (apt-get update failed)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2 \
    || skip "could not install ${need[*]} from the Debian registry"
fi

# ---- 2. sysroot ---------------------------------------------------------------------------------
if ! "$REPO/tools/pi/sysroot.sh" "$CACHE"; then
  if [[ -x "$CACHE/sysroot/usr/bin/python3.11" ]]; then
    log "sysroot refresh failed; using the cached one"
  else
    skip "the Debian registry is unreachable (no arm64 Python 3.11 sysroot could be built)"
  fi
fi

# ---- x86 reference: the same job natively --------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-sdfa-pi.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export EDGE_SDFA_KERNELS=numpy   # the executable specification on both sides; C is checked below
log "x86 reference finetune ($HOST_PY)"
(cd "$WORK" && "$HOST_PY" -m edge_sdfa finetune --json --quiet --store "$WORK/x86-store" > "$WORK/x86.json")
# the committed head: the store's active slot (state.json; symlink views are not relied on)
active_head() { "$HOST_PY" -c 'import sys; from edge_sdfa.store import Store; print(Store(sys.argv[1]).active_dir() / "head.npz")' "$1"; }
x86_head=$(sha256sum "$(active_head "$WORK/x86-store")" | cut -d' ' -f1)

fail=0
summary=()
for cpu in "${CPUS[@]}"; do
  tag=${cpu#cortex-}
  wrapper="$CACHE/bin/python3.11-$tag"
  mkdir -p "$CACHE/bin"
  # -0 "$0": the emulated Python sees the wrapper (or the venv's link to it) as argv[0], so
  # sys.executable re-executes through qemu (pip, ensurepip and the tests start subprocesses).
  cat > "$wrapper.tmp" <<WRAP
#!/bin/sh
exec qemu-aarch64-static -cpu $cpu -L "$CACHE/sysroot" -0 "\$0" "$CACHE/sysroot/usr/bin/python3.11" "\$@"
WRAP
  chmod +x "$wrapper.tmp" && mv "$wrapper.tmp" "$wrapper"
  venv="$CACHE/venv-$tag"
  export PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  fresh=0
  if [[ ! -f "$venv/.complete" ]]; then   # (re)build a venv that is missing or half made
    log "[$cpu] python3.11 -m venv"
    rm -rf "$venv" && "$wrapper" -m venv "$venv" && touch "$venv/.complete"
    fresh=1
  fi
  py="$venv/bin/python"
  # The C kernels are built by `pip install .` (setup.py build_ext, honouring CC/CFLAGS). The
  # emulated pip runs the host's x86 cross compiler natively; flags per CPU, never -march=native:
  # the Pi 4 baseline armv8-a, the Pi 5 armv8.2-a with the dot product (checked below: the
  # emulated CPU must report asimddp in its HWCAP before that build is trusted).
  case $cpu in
    cortex-a76) cflags="-march=armv8.2-a+dotprod"; want_dotprod=1 ;;
    *) cflags="-march=armv8-a"; want_dotprod=0 ;;
  esac
  hwcap=$("$py" -c 'import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; print(int(bool(g(16) & (1 << 20))))')
  if [[ "$hwcap" != "$want_dotprod" ]]; then
    log "[$cpu] HWCAP asimddp=$hwcap, expected $want_dotprod: wrong emulated CPU"; fail=1
    summary+=("$cpu HWCAP check FAILED"); continue
  fi
  log "[$cpu] pip install . (aarch64 wheels from PyPI; C kernels: CC=aarch64-linux-gnu-gcc CFLAGS=$cflags)"
  t=$(date +%s)
  # a new venv: `pip install .` with its dependencies; a cached one: this tree's code rebuilt,
  # and the dependencies only if they changed (pip check)
  # from a clean copy of the tree, as a Pi owner's clone: setuptools builds in the source tree,
  # and a build/ left by another CPU's flags would be reused (a Pi 5 library on a Pi 4: SIGILL)
  src="$WORK/src-$tag"
  mkdir -p "$src"
  tar -C "$REPO" --exclude=./.git --exclude=./.cache --exclude='./.venv*' --exclude=./build \
      --exclude='*.egg-info' --exclude='_c_kernels*.so' --exclude=__pycache__ -cf - . | tar -C "$src" -xf -
  export CC=aarch64-linux-gnu-gcc CFLAGS="$cflags"
  if [[ $fresh == 1 ]]; then
    "$py" -m pip install -q "$src" >&2 || skip "pip could not install the package's dependencies (PyPI unreachable?)"
    "$py" -m pip install -q pytest hypothesis pytest-timeout >&2 || skip "pip could not install pytest (PyPI unreachable?)"
  else
    "$py" -m pip install -q --force-reinstall --no-deps "$src" >&2 || { fail=1; summary+=("$cpu pip install . FAILED"); continue; }
    "$py" -m pip check >/dev/null 2>&1 || "$py" -m pip install -q "$src" >&2 \
      || skip "pip could not install the package's dependencies (PyPI unreachable?)"
  fi
  unset CC CFLAGS
  install_s=$(( $(date +%s) - t ))
  probe=$("$py" -c "import platform, sys, numpy; print(platform.machine(), '%d.%d' % sys.version_info[:2], numpy.__version__)")
  log "[$cpu] installed in ${install_s}s: $probe"
  if ! (cd "$WORK" && "$py" -c "from edge_sdfa.int8 import kernels; kernels.get('c')" >&2); then
    log "[$cpu] the C kernels were not built by pip install ."; fail=1; summary+=("$cpu C kernels NOT BUILT")
  fi
  # the numpy set runs on the emulated CPU in the kernel tests below; its whole job only on request
  kernel_sets=${PI_KERNELS:-c}
  for kernels in $kernel_sets; do
    store="$WORK/$tag-$kernels-store"
    log "[$cpu] edge-sdfa finetune --json (kernels $kernels)"
    t=$(date +%s)
    if ! (cd "$WORK" && EDGE_SDFA_KERNELS=$kernels "$venv/bin/edge-sdfa" finetune --json --quiet --store "$store" \
        > "$WORK/$tag-$kernels.json"); then
      fail=1; summary+=("$cpu $kernels finetune FAILED"); continue
    fi
    job_s=$(( $(date +%s) - t ))
    head=$(sha256sum "$(active_head "$store")" | cut -d' ' -f1)
    if [[ "$head" == "$x86_head" ]]; then same=yes; else same=NO; fail=1; fi
    log "[$cpu] kernels $kernels: ${job_s}s, committed weights equal x86: $same"
    summary+=("$cpu $kernels finetune ${job_s}s weights_equal_x86=$same")
  done
  log "[$cpu] edge-sdfa predict --json"
  if ! (cd "$WORK" && EDGE_SDFA_KERNELS=c "$venv/bin/edge-sdfa" predict "$WORK/$tag-c-store" --json > "$WORK/$tag-predict.json"); then
    fail=1; summary+=("$cpu predict FAILED"); continue
  fi
  "$HOST_PY" - "$WORK/$tag-predict.json" "$WORK/x86-store" <<'PY' || { fail=1; summary+=("$cpu predict MISMATCH"); }
import json, subprocess, sys
pi = json.loads(open(sys.argv[1]).read())
x86 = json.loads(subprocess.run([sys.executable, "-m", "edge_sdfa", "predict", sys.argv[2], "--json"],
                                capture_output=True, text=True, check=True).stdout)
ok = pi["accuracy"] == x86["accuracy"] and pi["samples"] == x86["samples"]
print(f"pi: predict accuracy {pi['accuracy']:.4f} on {pi['samples']} samples (x86 {x86['accuracy']:.4f}), "
      f"latency p50 {pi['latency_ms']['p50']:.3f} ms", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
  log "[$cpu] kernel bit-exactness tests"
  # on a Pi, `gcc`/`cc` compile for the Pi: shims to the cross compiler stand in for them (the
  # install-time build tests call the system compiler by name)
  mkdir -p "$CACHE/cross-bin"
  for c in gcc cc; do printf '#!/bin/sh\nexec aarch64-linux-gnu-gcc "$@"\n' > "$CACHE/cross-bin/$c"; chmod +x "$CACHE/cross-bin/$c"; done
  if (cd "$WORK" && PATH="$CACHE/cross-bin:$PATH" EDGE_SDFA_KERNELS= "$py" -m pytest -q -p no:cacheprovider --rootdir "$REPO" \
        "$REPO"/tests/test_int8_*.py >&2); then
    summary+=("$cpu kernel tests passed")
  else
    fail=1; summary+=("$cpu kernel tests FAILED")
  fi
done
echo "test-pi: $(( $(date +%s) - T0 ))s" >&2
for line in "${summary[@]}"; do echo "test-pi: $line" >&2; done
[[ $fail == 0 ]] && echo "test-pi: OK" >&2 || { echo "test-pi: FAILED" >&2; exit 1; }
