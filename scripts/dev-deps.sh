#!/usr/bin/env bash
# Installs the system tools the test suite uses besides the Rust toolchain
# (Debian/Ubuntu): systemd-analyze (unit checks), Chromium + ChromeDriver
# (the dashboard's browser test), promtool (the /metrics format check) and
# PostgreSQL 15 (the second backend; CI starts a throwaway server),
# tinyproxy (the agent's HTTP CONNECT proxy tests start their own), and
# python3-venv + curl for scripts/schemathesis.sh.
# Installs only what is missing; safe to rerun.
set -euo pipefail
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
# scripts/schemathesis.sh: python3 with venv (schemathesis itself comes from
# PyPI into a virtual environment) and curl.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "installing: ${need[*]}"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's prometheus package starts a server on install where systemd runs;
# the tests need only promtool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# The same for tinyproxy's service: the tests start their own proxies.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tinyproxy 2>/dev/null; then
    $SUDO systemctl disable --now tinyproxy >/dev/null 2>&1 || true
fi
