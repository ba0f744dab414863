#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: one command on a fresh machine.
# Installs what the tests need (a virtualenv with the package and its test extras,
# Debian's promtool, redis-server and PostgreSQL 15 when missing), then lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
# The PostgreSQL tests run Debian's binaries from /usr/lib/postgresql/15/bin in a temporary
# directory of their own; the system cluster is never started or stopped here.
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${need_apt[*]} (Debian packages)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
        # The Debian packages start their services; the tests start their own on free
        # ports, so stop the ones this run just installed, and only those: a service
        # that was there before is someone's own.
        for svc in "${need_apt[@]}"; do
            if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
        done
    else
        echo "== missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]}); the tests that need them will be skipped" >&2
    fi
fi

VENV=${JOBMETRICS_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
# arq pins redis<6, which Celery's kombu cannot share; it runs on the redis the test
# extra installs, so it goes in without its pins.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps 'arq>=0.25'
# APScheduler 4.x is a pre-release whose package replaces 3.x: tests/test_apscheduler4.py
# runs its jobs in a second virtualenv of its own.
[ -x .venv-aps4/bin/python ] || python3 -m venv .venv-aps4
.venv-aps4/bin/python -m pip install -q --disable-pip-version-check -e . 'apscheduler==4.0.0a6'

echo "== ruff"
"$VENV/bin/ruff" check src tests bench examples
echo "== mypy --strict"
"$VENV/bin/mypy" --strict src
echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
