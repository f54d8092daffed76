#!/bin/sh
# Installs the Outpost agent as a systemd service, or removes it.
#
#   sudo sh install.sh --server https://cp.example.com:8443 \
#       --install-id inst_… --ca-fingerprint sha256:… [--binary PATH|URL] \
#       [--interval 10s] [--log-file PATH]... [--journal-unit UNIT]...
#   (or --enroll-token oet_… [--device-name NAME] instead of --install-id)
#   sudo sh install.sh --uninstall [--purge]
#
# Idempotent: running it again rewrites the configuration and restarts the
# agent; the agent's state (key, certificate, spool) is kept. --uninstall
# keeps the state too unless --purge is given.
#
# --root DIR installs into DIR instead of / and runs no system command (for
# image builds and tests); --dry-run prints what would be done, changes nothing.
set -eu

PROG=install.sh
SERVER=""
INSTALL_ID=""
ENROLL_TOKEN=""
DEVICE_NAME=""
CA_FP=""
BINARY=""
INTERVAL=""
LOG_FILES=""
UNITS=""
ROOT=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
USER_NAME=outpost-agent

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*"; }

usage() {
    sed -n '2,15p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --server) need_arg "$@"; SERVER=$2; shift 2 ;;
        --install-id) need_arg "$@"; INSTALL_ID=$2; shift 2 ;;
        --enroll-token) need_arg "$@"; ENROLL_TOKEN=$2; shift 2 ;;
        --device-name) need_arg "$@"; DEVICE_NAME=$2; shift 2 ;;
        --ca-fingerprint) need_arg "$@"; CA_FP=$2; shift 2 ;;
        --binary) need_arg "$@"; BINARY=$2; shift 2 ;;
        --interval) need_arg "$@"; INTERVAL=$2; shift 2 ;;
        --log-file) need_arg "$@"; LOG_FILES="$LOG_FILES
$2"; shift 2 ;;
        --journal-unit) need_arg "$@"; UNITS="$UNITS
$2"; shift 2 ;;
        --root) need_arg "$@"; ROOT=${2%/}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# Runs a command, or shows it (dry run, or a --root install for system commands).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}
system() {
    if [ "$DRY_RUN" = 1 ] || [ -n "$ROOT" ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}
# Writes stdin to a file with a mode (atomically: temp file, then rename).
write_file() {
    _path=$1 _mode=$2
    if [ "$DRY_RUN" = 1 ]; then
        echo "would write $_path (mode $_mode):"
        sed 's/^/    /'
        return
    fi
    _tmp="$_path.tmp.$$"
    ( umask 077; cat > "$_tmp" )
    chmod "$_mode" "$_tmp"
    mv -f "$_tmp" "$_path"
}

if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ]; then
    [ "$(id -u)" = 0 ] || die "run as root (sudo sh $PROG …): it creates a user, writes /etc and starts a service"
    [ -d /run/systemd/system ] || die "systemd is not running on this machine; run 'outpost-agent run' under your service manager instead"
fi

ETC="$ROOT/etc/outpost"
UNIT_DIR="$ROOT/etc/systemd/system"
BIN="$ROOT/usr/bin/outpost-agent"
STATE="$ROOT/var/lib/outpost-agent"
SCRIPT_DIR=$(cd "$(dirname "$0")" 2>/dev/null && pwd || echo .)

if [ "$UNINSTALL" = 1 ]; then
    system systemctl disable --now outpost-agent.service || true
    run rm -f "$UNIT_DIR/outpost-agent.service" "$BIN" "$ETC/agent.toml" "$ETC/agent.env"
    system systemctl daemon-reload
    if [ "$PURGE" = 1 ]; then
        run rm -rf "$STATE"
        system userdel "$USER_NAME" || true
        say "removed the agent, its configuration, state and user"
    else
        say "removed the agent and its configuration; state kept in $STATE (--purge removes it)"
    fi
    exit 0
fi

# A box that is already enrolled needs no install ID again.
if [ ! -f "$STATE/identity.json" ]; then
    [ -n "$SERVER" ] || die "--server is required (the control plane's device URL, https://HOST:PORT)"
    [ -n "$INSTALL_ID$ENROLL_TOKEN" ] || die "--install-id is required (from the create-device answer), or --enroll-token"
    [ -n "$CA_FP" ] || die "--ca-fingerprint is required (sha256:… from the create-device answer)"
fi
case "$SERVER" in ""|https://*) ;; *) die "--server must start with https:// (got $SERVER)" ;; esac
case "$INSTALL_ID" in ""|inst_*) ;; *) die "--install-id must start with inst_ (got $INSTALL_ID)" ;; esac
[ -z "$INSTALL_ID" ] || [ -z "$ENROLL_TOKEN" ] || die "give --install-id or --enroll-token, not both"
case "$ENROLL_TOKEN" in ""|oet_*) ;; *) die "--enroll-token must start with oet_" ;; esac
case "$CA_FP" in ""|sha256:*) ;; *) die "--ca-fingerprint must look like sha256:<hex> (got $CA_FP)" ;; esac

# The binary: a path, a URL, or outpost-agent next to this script.
if [ -z "$BINARY" ]; then
    if [ -x "$SCRIPT_DIR/outpost-agent" ]; then
        BINARY="$SCRIPT_DIR/outpost-agent"
    elif [ -x "$BIN" ]; then
        BINARY=""  # already installed: keep it
    else
        die "no agent binary: give --binary PATH or URL (a release build of outpost-agent for $(uname -m))"
    fi
fi

run mkdir -p "$ETC" "$UNIT_DIR" "$ROOT/usr/bin"
case "$BINARY" in
    http://*|https://*)
        command -v curl >/dev/null 2>&1 || die "curl is needed to download $BINARY"
        run curl -fsSL -o "$BIN.download" "$BINARY"
        run chmod 0755 "$BIN.download"
        run mv -f "$BIN.download" "$BIN"
        ;;
    "") ;;
    *)
        [ -f "$BINARY" ] || die "binary $BINARY does not exist"
        run cp "$BINARY" "$BIN.new"
        run chmod 0755 "$BIN.new"
        run mv -f "$BIN.new" "$BIN"
        ;;
esac

toml_list() {
    printf '%s\n' "$1" | awk 'NF { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); printf "%s\"%s\"", (n++ ? ", " : ""), $0 }'
}

{
    echo "# Written by install.sh; edit and 'systemctl reload outpost-agent' (interval,"
    echo "# log sources and log level change live; the rest on restart)."
    echo 'state-dir = "/var/lib/outpost-agent"'
    [ -n "$INTERVAL" ] && echo "interval = \"$INTERVAL\""
    [ -n "$LOG_FILES" ] && echo "log-files = [$(toml_list "$LOG_FILES")]"
    [ -n "$UNITS" ] && echo "journal-units = [$(toml_list "$UNITS")]"
    true
} | write_file "$ETC/agent.toml" 0644

if [ -n "$INSTALL_ID$ENROLL_TOKEN" ]; then
    # The install ID (or enrollment token) is a secret until the box has
    # enrolled: root-only file.
    {
        echo "OUTPOST_SERVER=$SERVER"
        [ -z "$INSTALL_ID" ] || echo "OUTPOST_INSTALL_ID=$INSTALL_ID"
        [ -z "$ENROLL_TOKEN" ] || echo "OUTPOST_ENROLL_TOKEN=$ENROLL_TOKEN"
        [ -z "$DEVICE_NAME" ] || echo "OUTPOST_DEVICE_NAME=$DEVICE_NAME"
        echo "OUTPOST_CA_FINGERPRINT=$CA_FP"
    } | write_file "$ETC/agent.env" 0600
fi

UNIT_SRC="$SCRIPT_DIR/outpost-agent.service"
if [ -f "$UNIT_SRC" ]; then
    write_file "$UNIT_DIR/outpost-agent.service" 0644 < "$UNIT_SRC"
else
    die "outpost-agent.service must sit next to $PROG"
fi

if ! id "$USER_NAME" >/dev/null 2>&1 || [ -n "$ROOT" ]; then
    system useradd --system --no-create-home --home-dir /var/lib/outpost-agent \
        --shell /usr/sbin/nologin --user-group "$USER_NAME"
fi
system systemctl daemon-reload
system systemctl enable outpost-agent.service
system systemctl restart outpost-agent.service
say "installed; 'systemctl status outpost-agent' and 'outpost-agent status --state-dir /var/lib/outpost-agent' show how it is doing"
