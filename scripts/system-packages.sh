#!/usr/bin/env bash
# Install the Debian packages edge-ocr uses, when they are missing.
#   --service   what the installed service needs: the build tools of systemd-python
#               (gcc, pkg-config, libsystemd-dev, the Python headers), python3-venv and
#               tcmalloc (lower peak RSS: see edge/allocator.py)
#   (default)   the above, plus Mosquitto and its clients (the local broker of scripts/run.sh)
#               and ffmpeg (serves camera streams in tests)
#   --test      the default, plus Debian's RTSP server library (the RTSP camera test) and
#               Chromium (the status page is tested in headless Chromium)
set -euo pipefail
mode=${1:-}

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
python3 -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("tcmalloc_minimal"))' \
  || missing+=(libtcmalloc-minimal4)
if [[ $mode != --service ]]; then
  command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
  command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
  command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
fi
if [[ $mode == --test ]]; then
  perl -MRTSP::Server -e 1 2>/dev/null || missing+=(librtsp-server-perl)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
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
