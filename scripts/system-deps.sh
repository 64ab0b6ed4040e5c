#!/usr/bin/env bash
# Debian packages that the tests use: a real PostgreSQL server, a real Chromium + driver,
# Graphviz (`dot`, which draws a run's graph in the Traces tab), and nginx (the balancer in front of
# several model servers per role, docs/deploy.md).
# Installed only when missing and when we are root; tests that need them skip with a reason otherwise.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${need[*]}; tests that need them will skip" >&2; exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "could not install ${need[*]}; tests that need them will skip" >&2
exit 0
