#!/usr/bin/env bash
# Install the Debian packages the daemon and its tests use, when they are missing:
# Mosquitto (the local broker and its clients), ffmpeg (serves camera streams in tests), and
# what systemd-python builds with (gcc, pkg-config, libsystemd-dev, the Python headers).
# With --test also Debian's RTSP server library, which the RTSP camera test runs.
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
# systemd-python builds against libsystemd
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if [[ ${1:-} == --test ]]; then
  perl -MRTSP::Server -e 1 2>/dev/null || missing+=(librtsp-server-perl)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
