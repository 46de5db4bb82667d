#!/usr/bin/env bash
# Build (once) an arm64 Debian 12 sysroot holding Python 3.11 and what it needs, from the Debian
# registry, without touching the host's dpkg state: a private apt configuration under $CACHE/apt
# downloads the arm64 .debs, `dpkg -x` unpacks them into $CACHE/sysroot.
#   tools/pi/sysroot.sh CACHE_DIR
# Idempotent: a stamp holding the package list skips the work when nothing changed.
set -euo pipefail
CACHE=$(realpath -m "${1:?usage: sysroot.sh CACHE_DIR}")
MIRROR=${PI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${PI_DEBIAN_SUITE:-bookworm}
# Python 3.11 with venv/ensurepip; libstdc++6 (numpy's wheels link it) and libgomp1 (OpenMP runtime of
# the C kernels), as on Raspberry Pi OS.
ROOTS=(python3.11 python3.11-venv libpython3.11-stdlib libstdc++6 libgomp1 ca-certificates)
APT="$CACHE/apt"
SYSROOT="$CACHE/sysroot"
STAMP="$SYSROOT/.stamp"
WANT="$MIRROR $SUITE ${ROOTS[*]}"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$SYSROOT/usr/bin/python3.11" ]]; then
  exit 0
fi
mkdir -p "$APT/etc/apt.conf.d" "$APT/etc/preferences.d" "$APT/etc/trusted.gpg.d" "$APT/state/lists/partial" \
         "$APT/cache/archives/partial" "$CACHE/debs"
echo "deb [arch=arm64] $MIRROR $SUITE main" > "$APT/etc/sources.list"
: > "$APT/state/status"
opts=(-o "Dir::Etc::SourceList=$APT/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::Etc::Parts=$APT/etc/apt.conf.d" -o "Dir::Etc::PreferencesParts=$APT/etc/preferences.d"
      -o "Dir::State=$APT/state" -o "Dir::State::status=$APT/state/status" -o "Dir::Cache=$APT/cache"
      -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
      -o "Acquire::Retries=3" -o "Acquire::http::Timeout=30")
echo "pi: arm64 package index ($MIRROR $SUITE)" >&2
apt-get "${opts[@]}" -q update >&2
# dependency closure (Depends and Pre-Depends only), virtual packages dropped
mapfile -t pkgs < <(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${ROOTS[@]}" | grep -E '^[a-z0-9]' | sort -u)
real=()
for p in "${pkgs[@]}"; do
  if apt-cache "${opts[@]}" show "$p:arm64" >/dev/null 2>&1; then real+=("$p:arm64"); fi
done
echo "pi: ${#real[@]} arm64 packages" >&2
(cd "$CACHE/debs" && apt-get "${opts[@]}" -q download "${real[@]}" >&2)
rm -rf "$SYSROOT.tmp"
mkdir -p "$SYSROOT.tmp"
for deb in "$CACHE"/debs/*_arm64.deb "$CACHE"/debs/*_all.deb; do
  [[ -e "$deb" ]] && dpkg -x "$deb" "$SYSROOT.tmp"
done
rm -rf "$SYSROOT"
mv "$SYSROOT.tmp" "$SYSROOT"
echo "$WANT" > "$STAMP"
echo "pi: sysroot ready at $SYSROOT" >&2
