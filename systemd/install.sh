#!/bin/sh
# Installs the Outpost agent as a systemd service, or removes it (see usage()).
# Served by a control plane at GET /install.sh, DOWNLOAD_URL and
# DOWNLOAD_INDEX below are filled in: the tarball for `uname -m` is then
# always downloaded from there and its SHA-256 checked against that index
# before anything is installed; its binary (unless --binary names another)
# and its unit are installed. Otherwise both come from the directory of this
# script when it was run as a file from an unpacked release; piped (`sh -s`)
# nothing is ever taken from the current directory.
# A box enrolls with --install-id, or with --enroll-token (and --device-name)
# for a fleet token.
set -eu

# Filled in when a control plane serves this script (GET /install.sh): where
# the tarballs are, and one "file arch version sha256" line per tarball.
DOWNLOAD_URL=""
DOWNLOAD_INDEX=""

PROG=install.sh
SERVER=""
INSTALL_ID=""
ENROLL_TOKEN=""
DEVICE_NAME=""
CA_FP=""
PUBLISHER_KEYS=""
BINARY=""
INTERVAL=""
PROXY=""
NO_PROXY_LIST=""
LOG_FILES=""
UNITS=""
ROOT=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
WAIT=auto
WAIT_SECS=60
USER_NAME=outpost-agent

# printf, not echo: dash's echo would read backslashes in user input.
die() { printf '%s\n' "$PROG: error: $*" >&2; exit 1; }
say() { printf '%s\n' "$PROG: $*"; }

usage() {
    cat <<'EOF'
Installs the Outpost agent as a systemd service, or removes it.

  sudo sh install.sh --server https://cp.example.com:8443 \
      --install-id inst_… --ca-fingerprint sha256:… [--binary PATH|URL] \
      [--interval 10s] [--log-file PATH]... [--journal-unit UNIT]... \
      [--publisher-key ed25519:…]... [--no-wait | --wait-timeout SECS] \
      [--proxy http://[USER:PASS@]HOST:PORT [--no-proxy HOST,DOMAIN,CIDR…]]
  (or --enroll-token oet_… [--device-name NAME] instead of --install-id:
  a fleet token that enrolls many boxes)
  sudo sh install.sh --uninstall [--purge]

Every argument's format is checked before anything changes (no value may
hold a control character). After starting the service it waits (60 s;
--wait-timeout, --no-wait) until the agent has enrolled and connected, and
prints "enrolled as DEVICE, connected" or the agent's error (exit status 1);
once enrolled, an --enroll-token is removed from /etc/outpost/agent.env
(with --no-wait it stays there, and a warning says so).

--proxy makes the agent reach the control plane through an HTTP proxy
(CONNECT; HTTPS_PROXY in /etc/outpost/agent.env, which is 0600: the
password stays root's), and this script download through it; --no-proxy
(NO_PROXY) lists the hosts reached directly. Percent-encode quotes,
backslashes, spaces, @ and : in the user and password. Given on an enrolled
box, they replace just those lines.

--publisher-key (repeatable) names an artifact publisher key the agent
trusts (OUTPOST_PUBLISHER_KEYS in /etc/outpost/agent.env); an agent with
none installs no artifact. Given on an enrolled box without --install-id,
it replaces just that line.

The binary and unit come from the directory of install.sh (an unpacked
release), or, as a control plane serves it (curl … | sudo sh -s --), from
its SHA-256-checked tarball; --binary replaces only the binary. Piped, files
in the current directory are never used.

Idempotent: running it again rewrites the configuration and restarts the
agent; the agent's state (key, certificate, spool) is kept.
--uninstall keeps the state too unless --purge is given.

--root DIR installs into DIR instead of / and runs no system command (for
image builds and tests; --wait then waits for an agent started by hand on
DIR's state directory); --dry-run prints what would be done, changes nothing.
EOF
    exit "${1:-0}"
}

# Every option value passes here first. A newline (or any control
# character) is refused outright: the format checks below match line by
# line, and a second line would become a second variable in agent.env or a
# second key in agent.toml. The value itself is not printed back.
need_arg() {
    [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
    case "$2" in
        *[[:cntrl:]]*) die "$1 must not contain a control character (newline, carriage return, tab, escape…)" ;;
    esac
}

while [ $# -gt 0 ]; do
    case "$1" in
        --server) need_arg "$@"; SERVER=$2; shift 2 ;;
        --install-id) need_arg "$@"; INSTALL_ID=$2; shift 2 ;;
        --enroll-token) need_arg "$@"; ENROLL_TOKEN=$2; shift 2 ;;
        --device-name) need_arg "$@"; DEVICE_NAME=$2; shift 2 ;;
        --ca-fingerprint) need_arg "$@"; CA_FP=$2; shift 2 ;;
        --publisher-key) need_arg "$@"; PUBLISHER_KEYS="${PUBLISHER_KEYS:+$PUBLISHER_KEYS,}$2"; shift 2 ;;
        --binary) need_arg "$@"; BINARY=$2; shift 2 ;;
        --interval) need_arg "$@"; INTERVAL=$2; shift 2 ;;
        --proxy) need_arg "$@"; PROXY=$2; shift 2 ;;
        --no-proxy) need_arg "$@"; NO_PROXY_LIST=$2; shift 2 ;;
        --log-file) need_arg "$@"; LOG_FILES="$LOG_FILES
$2"; shift 2 ;;
        --journal-unit) need_arg "$@"; UNITS="$UNITS
$2"; shift 2 ;;
        --root) need_arg "$@"; ROOT=${2%/}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --no-wait) WAIT=0; shift ;;
        --wait) WAIT=1; shift ;;
        --wait-timeout) need_arg "$@"; WAIT_SECS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# Runs a command, or shows it (dry run, or a --root install for system commands).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '%s\n' "would run: $*"
    else
        "$@"
    fi
}
system() {
    if [ "$DRY_RUN" = 1 ] || [ -n "$ROOT" ]; then
        printf '%s\n' "would run: $*"
    else
        "$@"
    fi
}
# Writes stdin to a file with a mode (atomically: temp file, then rename).
write_file() {
    _path=$1 _mode=$2
    if [ "$DRY_RUN" = 1 ]; then
        printf '%s\n' "would write $_path (mode $_mode):"
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
# The directory of this script when it was run as a file (sudo sh
# install.sh from an unpacked release); empty when it was piped (curl … |
# sudo sh -s --): then $0 is the shell's name, and the current directory is
# wherever root happened to be, e.g. a world-writable /tmp.
SCRIPT_DIR=""
case "${0##*/}" in
    sh|dash|bash|ash|ksh|mksh|zsh|busybox|-*) ;;
    *)
        if [ -f "$0" ]; then
            SCRIPT_DIR=$(cd "$(dirname "$0")" 2>/dev/null && pwd) || SCRIPT_DIR=""
        fi
        ;;
esac

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
# Formats first: a typo found now costs nothing; found by the service, it is
# a unit that exits 2 and is never restarted.
# The whole value must match: one that spans lines never does (need_arg
# refuses those already; this keeps the check sound on its own).
matches() {
    case "$1" in *"
"*) return 1 ;; esac
    printf '%s\n' "$1" | grep -Eq "$2"
}
if [ -n "$SERVER" ]; then
    matches "$SERVER" '^https://([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$' ||
        die "--server must be https://HOST:PORT, the control plane's device URL (got '$SERVER')"
fi
if [ -n "$INSTALL_ID" ]; then
    matches "$INSTALL_ID" '^inst_[A-Za-z0-9_-]{16,128}$' ||
        die "--install-id must be inst_ and the ID's characters, as the create-device answer shows it (got '$INSTALL_ID')"
fi
[ -z "$INSTALL_ID" ] || [ -z "$ENROLL_TOKEN" ] || die "give --install-id or --enroll-token, not both"
if [ -n "$ENROLL_TOKEN" ]; then
    matches "$ENROLL_TOKEN" '^oet_[A-Za-z0-9_-]{16,128}$' ||
        die "--enroll-token must be oet_ and the token's characters, as the create-token answer shows it"
fi
if [ -n "$DEVICE_NAME" ]; then
    # Written double-quoted into agent.env: none of the characters that a
    # quoted EnvironmentFile value (or a shell) reads specially.
    case "$DEVICE_NAME" in
        *[\"\'\\\$\`]*) _bad_name=1 ;;
        *) _bad_name=0 ;;
    esac
    if [ "$_bad_name" = 1 ] || [ "${#DEVICE_NAME}" -gt 128 ]; then
        die "--device-name must be 1-128 characters without quotes, backslashes, \$ or backticks (got '$DEVICE_NAME')"
    fi
fi
if [ -n "$CA_FP" ]; then
    # sha256:<64 hex>, or openssl's AB:CD:… form; written as the first.
    _hex=$(printf '%s' "${CA_FP#sha256:}" | tr -d ':' | tr 'A-F' 'a-f')
    if ! matches "$_hex" '^[0-9a-f]{64}$' || matches "$CA_FP" '^sha256:.*:'; then
        die "--ca-fingerprint must be sha256: and 64 hex digits, as the create-device answer shows it (got '$CA_FP')"
    fi
    CA_FP="sha256:$_hex"
fi
if [ -n "$PUBLISHER_KEYS" ]; then
    # Comma-joined above; each is ed25519: and the base64 of 32 bytes.
    printf '%s\n' "$PUBLISHER_KEYS" | tr ',' '\n' | while IFS= read -r _k; do
        matches "$_k" '^ed25519:[A-Za-z0-9+/]{43}=$' ||
            die "--publisher-key must be ed25519: and the base64 of a 32-byte key, as 'outpostctl artifact keygen' prints it (got '$_k')"
    done || exit 1
fi
if [ -n "$INTERVAL" ]; then
    matches "$INTERVAL" '^([0-9]+ ?[a-z]+ ?)+$' ||
        die "--interval must be a duration such as 10s or 1m (got '$INTERVAL')"
fi
printf '%s\n' "$LOG_FILES" | while IFS= read -r _f; do
    case "$_f" in ""|/*) ;; *) die "--log-file must be an absolute path (got '$_f')" ;; esac
done || exit 1
printf '%s\n' "$UNITS" | while IFS= read -r _u; do
    [ -z "$_u" ] || matches "$_u" '^[A-Za-z0-9@._:-]+$' || die "--journal-unit must be a unit name (got '$_u')"
done || exit 1
matches "$WAIT_SECS" '^[0-9]+$' || die "--wait-timeout must be whole seconds (got '$WAIT_SECS')"
if [ -n "$PROXY" ]; then
    # Written unquoted into agent.env: nothing an EnvironmentFile reads
    # specially. The value is not printed back (it may hold a password).
    matches "$PROXY" '^(http://)?([^"'"'"'\\[:space:]/@]+@)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$' ||
        die "--proxy must be http://[USER:PASS@]HOST:PORT, an HTTP proxy that takes CONNECT (percent-encode quotes, backslashes, spaces, / and @ in the user and password)"
    # This script's own downloads go through it too.
    https_proxy=$PROXY http_proxy=$PROXY
    export https_proxy http_proxy
fi
if [ -n "$NO_PROXY_LIST" ]; then
    matches "$NO_PROXY_LIST" '^[]A-Za-z0-9.,:/*[_-]+$' ||
        die "--no-proxy must be a comma-separated list of host names, domains, IP addresses or CIDR blocks (got '$NO_PROXY_LIST')"
    no_proxy=$NO_PROXY_LIST
    export no_proxy
fi

# The agent's tarball from the control plane that served this script: the
# one for this machine's arch in DOWNLOAD_INDEX, checked against its SHA-256,
# unpacked into a temporary directory that goes on exit.
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        openssl dgst -sha256 "$1" | sed 's/.*= *//'
    fi
}
download_release() {
    _arch=$(uname -m)
    case "$_arch" in amd64) _arch=x86_64 ;; arm64) _arch=aarch64 ;; esac
    _line=$(printf '%s\n' "$DOWNLOAD_INDEX" | awk -v a="$_arch" '$2 == a { print; exit }')
    if [ -z "$_line" ]; then
        _have=$(printf '%s\n' "$DOWNLOAD_INDEX" | awk 'NF { printf "%s%s", (n++ ? ", " : ""), $2 }')
        die "the control plane has no agent for $_arch (it has: ${_have:-none}); build one with scripts/release.sh (TARGET=…) into its --agent-dist directory"
    fi
    _file=$(printf '%s\n' "$_line" | cut -d' ' -f1)
    _want=$(printf '%s\n' "$_line" | cut -d' ' -f4)
    command -v curl >/dev/null 2>&1 || die "curl is needed to download the agent"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    say "downloading $DOWNLOAD_URL/$_file"
    curl -fsSL -o "$WORK/$_file" "$DOWNLOAD_URL/$_file" || die "could not download $DOWNLOAD_URL/$_file"
    _got=$(sha256_of "$WORK/$_file")
    [ "$_got" = "$_want" ] ||
        die "$_file has SHA-256 $_got but the control plane's index says $_want; refusing to install it (download it again; if it persists, the file on the server or something on the way altered it)"
    tar -xzf "$WORK/$_file" -C "$WORK" || die "could not unpack $_file"
    _dir="$WORK/${_file%.tar.gz}"
    [ -x "$_dir/outpost-agent" ] || die "$_file holds no ${_file%.tar.gz}/outpost-agent"
    [ -f "$_dir/outpost-agent.service" ] || die "$_file holds no ${_file%.tar.gz}/outpost-agent.service"
    RELEASE_DIR=$_dir
}

# Where the binary and the unit come from, settled before anything is
# written. Served by a control plane: its SHA-256-checked tarball (the
# binary unless --binary names one, and always the unit). Otherwise: the
# directory this script was run from, when it was run as a file.
UNIT_SRC=""
if [ -n "$DOWNLOAD_INDEX" ]; then
    download_release
    [ -n "$BINARY" ] || BINARY="$RELEASE_DIR/outpost-agent"
    UNIT_SRC="$RELEASE_DIR/outpost-agent.service"
elif [ -n "$SCRIPT_DIR" ]; then
    if [ -z "$BINARY" ] && [ -x "$SCRIPT_DIR/outpost-agent" ]; then
        BINARY="$SCRIPT_DIR/outpost-agent"
    fi
    [ ! -f "$SCRIPT_DIR/outpost-agent.service" ] || UNIT_SRC="$SCRIPT_DIR/outpost-agent.service"
fi
if [ -z "$UNIT_SRC" ]; then
    # The .deb's unit (root-owned, installed by the package).
    for _u in "$ROOT/lib/systemd/system/outpost-agent.service" "$ROOT/usr/lib/systemd/system/outpost-agent.service"; do
        if [ -f "$_u" ]; then UNIT_SRC=$_u; break; fi
    done
fi
if [ -z "$BINARY" ] && [ ! -x "$BIN" ]; then
    die "no agent binary: run the 'curl … | sudo sh' install command of a control plane with agent downloads, or install.sh from an unpacked release tarball (sudo sh install.sh …), or give --binary PATH or URL (a release build of outpost-agent for $(uname -m)); piped, files in the current directory are not used"
fi
[ -n "$UNIT_SRC" ] ||
    die "no outpost-agent.service to install: run install.sh from the unpacked release tarball (sudo sh install.sh …), where it sits next to it, or the 'curl … | sudo sh' command of a control plane with agent downloads; piped, files in the current directory are not used"

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
    # enrolled: root-only file. Every value was checked above (no control
    # characters; the device name, the one free-form value, is quoted).
    {
        echo "OUTPOST_SERVER=$SERVER"
        [ -z "$INSTALL_ID" ] || echo "OUTPOST_INSTALL_ID=$INSTALL_ID"
        [ -z "$ENROLL_TOKEN" ] || echo "OUTPOST_ENROLL_TOKEN=$ENROLL_TOKEN"
        [ -z "$DEVICE_NAME" ] || printf 'OUTPOST_DEVICE_NAME="%s"\n' "$DEVICE_NAME"
        echo "OUTPOST_CA_FINGERPRINT=$CA_FP"
        [ -z "$PUBLISHER_KEYS" ] || echo "OUTPOST_PUBLISHER_KEYS=$PUBLISHER_KEYS"
        [ -z "$PROXY" ] || echo "HTTPS_PROXY=$PROXY"
        [ -z "$NO_PROXY_LIST" ] || echo "NO_PROXY=$NO_PROXY_LIST"
    } | write_file "$ETC/agent.env" 0600
elif [ -n "$PUBLISHER_KEYS$PROXY$NO_PROXY_LIST" ]; then
    # An enrolled box: its env file stays, with the lines given replaced.
    _drop='^$'
    [ -z "$PUBLISHER_KEYS" ] || _drop="$_drop|^OUTPOST_PUBLISHER_KEYS="
    [ -z "$PROXY" ] || _drop="$_drop|^HTTPS_PROXY="
    [ -z "$NO_PROXY_LIST" ] || _drop="$_drop|^NO_PROXY="
    {
        [ ! -f "$ETC/agent.env" ] || grep -Ev "$_drop" "$ETC/agent.env" || true
        [ -z "$PUBLISHER_KEYS" ] || echo "OUTPOST_PUBLISHER_KEYS=$PUBLISHER_KEYS"
        [ -z "$PROXY" ] || echo "HTTPS_PROXY=$PROXY"
        [ -z "$NO_PROXY_LIST" ] || echo "NO_PROXY=$NO_PROXY_LIST"
    } | write_file "$ETC/agent.env" 0600
fi

write_file "$UNIT_DIR/outpost-agent.service" 0644 < "$UNIT_SRC"

if ! id "$USER_NAME" >/dev/null 2>&1 || [ -n "$ROOT" ]; then
    system useradd --system --no-create-home --home-dir /var/lib/outpost-agent \
        --shell /usr/sbin/nologin --user-group "$USER_NAME"
fi
system systemctl daemon-reload
system systemctl enable outpost-agent.service
system systemctl restart outpost-agent.service

# The agent's own word on how it went: status.json under the state dir, as
# `outpost-agent status --json` reads it.
json_field() {
    printf '%s\n' "$2" | sed -n "s/^  \"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n 1
}
if [ "$WAIT" = auto ]; then
    if [ -n "$ROOT" ] || [ "$DRY_RUN" = 1 ]; then WAIT=0; else WAIT=1; fi
fi
# The fleet enrollment token enrolls many boxes and is not spent by one: once
# this box has its certificate it needs the token no more, so the token does
# not stay on disk (agent.env rewritten without its line, atomically).
forget_token() {
    [ -f "$ETC/agent.env" ] && grep -q '^OUTPOST_ENROLL_TOKEN=' "$ETC/agent.env" || return 0
    grep -v '^OUTPOST_ENROLL_TOKEN=' "$ETC/agent.env" | write_file "$ETC/agent.env" 0600
    say "removed the enrollment token from $ETC/agent.env: the agent has its certificate and needs it no more"
}
if [ "$WAIT" = 0 ] || [ "$DRY_RUN" = 1 ]; then
    say "installed; 'systemctl status outpost-agent' and 'outpost-agent status --state-dir /var/lib/outpost-agent' show how it is doing"
    if [ "$DRY_RUN" = 0 ] && [ -f "$ETC/agent.env" ] && grep -q '^OUTPOST_ENROLL_TOKEN=' "$ETC/agent.env"; then
        printf '%s\n' "$PROG: warning: the enrollment token stays in $ETC/agent.env (it enrolls any number of boxes) until you delete its OUTPOST_ENROLL_TOKEN line once the agent has enrolled, or run this again without --no-wait, which waits for the enrollment and then removes it" >&2
    fi
    exit 0
fi
say "installed; waiting up to ${WAIT_SECS}s for the agent to enroll and connect (--no-wait skips this)"
_waited=0
_err=""
while :; do
    _json=$("$BIN" status --json --state-dir "$STATE" 2>/dev/null || true)
    _err=$(json_field last_error "$_json")
    if [ "$(json_field link "$_json")" = connected ]; then
        say "enrolled as $(json_field device_id "$_json"), connected"
        forget_token
        exit 0
    fi
    if [ -z "$ROOT" ] && ! systemctl is-active --quiet outpost-agent.service; then
        _log=$(journalctl -u outpost-agent.service -n 5 --no-pager -o cat 2>/dev/null || true)
        die "the agent stopped${_err:+: $_err}
$_log
(systemctl status outpost-agent; journalctl -u outpost-agent)"
    fi
    [ "$_waited" -lt "$WAIT_SECS" ] || break
    sleep 1
    _waited=$((_waited + 1))
done
die "the agent has not connected after ${WAIT_SECS}s: ${_err:-it reported no error yet} (outpost-agent status --state-dir /var/lib/outpost-agent; journalctl -u outpost-agent)"
