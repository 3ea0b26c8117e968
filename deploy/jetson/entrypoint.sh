#!/usr/bin/env bash
# Container entrypoint of the Shadowline edge daemon (Dockerfile.jetson).
#
# Config handling, in order:
#   SHADOWLINE_CONFIG_YAML  the whole device config as text (e.g. from an orchestrator secret); written atomically
#                           to $SHADOWLINE_STATE_DIR/device.yaml and used from there
#   SHADOWLINE_CONFIG       path of the device config (default /etc/shadowline/device.yaml, a read-only mount)
#   SHADOWLINE_LOG_LEVEL    debug | info | warning | error (default info)
#   SHADOWLINE_BIN          the shadowline executable (default: shadowline on PATH)
# The daemon never starts on a config that `shadowline edge validate-config` rejects: a device restarting in a loop
# on a typo is worse than one that stops and says why. Arguments that are not options run as a command instead
# (`docker run IMAGE shadowline hwbench /bundles/x`, `docker run IMAGE bash`).
set -euo pipefail

SHADOWLINE="${SHADOWLINE_BIN:-shadowline}"
STATE_DIR="${SHADOWLINE_STATE_DIR:-/var/lib/shadowline}"
LOG_LEVEL="${SHADOWLINE_LOG_LEVEL:-info}"

die() {
    local code="$1"
    shift
    echo "shadowline-entrypoint: $*" >&2
    exit "$code"
}

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

case "$LOG_LEVEL" in
    debug | info | warning | error) ;;
    *) die 2 "SHADOWLINE_LOG_LEVEL='$LOG_LEVEL' must be one of debug, info, warning, error" ;;
esac

if [[ -n "${SHADOWLINE_CONFIG_YAML:-}" ]]; then
    mkdir -p "$STATE_DIR" || die 2 "cannot create $STATE_DIR for the config from SHADOWLINE_CONFIG_YAML"
    tmp="$(mktemp "$STATE_DIR/.device.yaml.XXXXXX")" || die 2 "cannot write to $STATE_DIR"
    printf '%s\n' "$SHADOWLINE_CONFIG_YAML" >"$tmp"
    chmod 600 "$tmp"  # the config may hold broker credentials
    mv -f "$tmp" "$STATE_DIR/device.yaml"
    CONFIG="$STATE_DIR/device.yaml"
    if [[ -n "${SHADOWLINE_CONFIG:-}" && "$SHADOWLINE_CONFIG" != /etc/shadowline/device.yaml ]]; then
        echo "shadowline-entrypoint: SHADOWLINE_CONFIG_YAML is set; ignoring SHADOWLINE_CONFIG=$SHADOWLINE_CONFIG" >&2
    fi
else
    CONFIG="${SHADOWLINE_CONFIG:-/etc/shadowline/device.yaml}"
fi

[[ -e "$CONFIG" ]] || die 2 "no device config at $CONFIG: mount one there (-v /etc/shadowline:/etc/shadowline:ro), \
set SHADOWLINE_CONFIG to its path, or pass its text in SHADOWLINE_CONFIG_YAML (see docs/jetson.md)"
[[ -f "$CONFIG" ]] || die 2 "device config $CONFIG is not a regular file"
[[ -r "$CONFIG" ]] || die 2 "device config $CONFIG is not readable by uid $(id -u)"

command -v "$SHADOWLINE" >/dev/null 2>&1 || die 127 "'$SHADOWLINE' is not installed or not on PATH"

if "$SHADOWLINE" edge validate-config --help >/dev/null 2>&1; then
    if ! out="$("$SHADOWLINE" edge validate-config "$CONFIG" 2>&1)"; then
        echo "$out" >&2
        die 2 "refusing to start: the device config $CONFIG is invalid (fix it, then restart the container)"
    fi
    echo "shadowline-entrypoint: $out" >&2
else
    echo "shadowline-entrypoint: this shadowline has no 'edge validate-config' command; the config is checked" \
        "when the daemon starts" >&2
fi

exec "$SHADOWLINE" edge run --config "$CONFIG" --log-level "$LOG_LEVEL" "$@"
