#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those missing. Needs root (or sudo) when something is missing.
set -euo pipefail
pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 g++ make bazel-bootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
