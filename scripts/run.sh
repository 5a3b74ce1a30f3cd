#!/usr/bin/env bash
# Install (scripts/setup.sh), make sure a Mosquitto answers on localhost:1883 (one is started
# for this session if none does), and run the daemon on config/edge-ocr.yaml: images dropped
# into ~/edge-ocr/spool are read and published under edge-ocr/edge-ocr-1/.
# Extra arguments go to `edge-ocr run` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  broker_dir=${XDG_STATE_HOME:-$HOME/.local/state}/edge-ocr/mosquitto
  mkdir -p "$broker_dir"
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n' \
    "$broker_dir" > "$broker_dir/mosquitto.conf"
  mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  "$mosquitto" -c "$broker_dir/mosquitto.conf" -d
  echo "started a local Mosquitto on 127.0.0.1:1883 (conf in $broker_dir)"
fi
mkdir -p "$HOME/edge-ocr/spool"
echo "spool folder: $HOME/edge-ocr/spool   subscribe: mosquitto_sub -t 'edge-ocr/#' -v"
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(--config config/edge-ocr.yaml)
exec .venv/bin/edge-ocr run "${args[@]}"
