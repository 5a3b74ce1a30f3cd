#!/usr/bin/env bash
# Refuse, before anything is installed, a system edge-ocr cannot run on: ONNX Runtime publishes
# wheels for 64-bit systems only (amd64 and arm64), so 32-bit Raspberry Pi OS (armhf, armv7l or
# armv6l, even on a 64-bit kernel) and 32-bit x86 stop here with what to install instead.
# Run by scripts/setup.sh and scripts/install.sh; exits 0 on a supported system.
set -euo pipefail

userland=$(dpkg --print-architecture 2>/dev/null || true)
machine=$(uname -m)
bits=$(getconf LONG_BIT 2>/dev/null || echo 64)

refuse() {
  echo "edge-ocr: $1" >&2
  echo "edge-ocr: ONNX Runtime, which edge-ocr runs on, has no wheels for 32-bit systems." >&2
  echo "edge-ocr: $2" >&2
  exit 1
}

case "$userland:$machine:$bits" in
  armhf:*|armel:*|*:armv6l:*|*:armv7l:*|*:armv8l:*|*:aarch64:32)
    refuse "this is a 32-bit Arm system (${userland:-?}, ${machine}, ${bits}-bit userland)." \
      "Install Raspberry Pi OS (64-bit), or another arm64 Debian (bookworm), and run this again." ;;
  i386:*|*:i686:*|*:i386:*|*:x86_64:32)
    refuse "this is a 32-bit x86 system (${userland:-?}, ${machine})." \
      "Install a 64-bit (amd64) Debian and run this again." ;;
  amd64:*|arm64:*|:x86_64:64|:aarch64:64) ;;
  *) echo "edge-ocr: ${userland:-$machine} is not a tested architecture; going on" >&2 ;;
esac
