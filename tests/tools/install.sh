#!/usr/bin/env bash
# Installs what the deploy/Kubernetes/Prometheus tests need; idempotent (a second run only
# checks, in about a second). Run as root on Debian 12 with Debian, PyPI and npm reachable.
#
#   prometheus + promtool   Debian package `prometheus`      (prometheus_e2e.rs, deploy_manifests.rs)
#   kubernetes-validate     PyPI, ships the Kubernetes OpenAPI schemas (validates offline)
#   PyYAML                  PyPI (kubernetes-validate's dependency; the tests read YAML with it)
#   @kubernetes-models/prometheus-operator
#                           npm, the ServiceMonitor/PrometheusRule CRD schemas, installed under
#                           $CHAINPROBE_TEST_TOOLS (default /opt/chainprobe-test-tools)
#
# The tests fail (not skip) with a pointer to this script when a tool is missing.
set -euo pipefail
TOOLS=${CHAINPROBE_TEST_TOOLS:-/opt/chainprobe-test-tools}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. Prometheus server and promtool (Debian).
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus: present ($(promtool --version 2>&1 | head -1))"
else
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    $SUDO apt-get update -qq
  fi
  # The package's postinst may try to start the service; on a machine without systemd as init
  # that fails harmlessly. The tests run their own server on 127.0.0.1.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  echo "prometheus: installed ($(promtool --version 2>&1 | head -1))"
fi
# Debian starts a system Prometheus on :9090 where systemd runs; the tests do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# 2. kubernetes-validate (PyPI), with the schemas of current Kubernetes releases inside.
if python3 -c 'import kubernetes_validate, yaml' 2>/dev/null && command -v kubernetes-validate >/dev/null 2>&1; then
  echo "kubernetes-validate: present ($(kubernetes-validate --version 2>&1 | tail -1))"
else
  python3 -m pip install -q --disable-pip-version-check 'kubernetes-validate>=1.33' pyyaml
  echo "kubernetes-validate: installed ($(kubernetes-validate --version 2>&1 | tail -1))"
fi

# 3. Prometheus Operator CRD schemas (npm).
if [ -f "$TOOLS/node_modules/@kubernetes-models/prometheus-operator/package.json" ]; then
  echo "prometheus-operator schemas: present ($TOOLS)"
else
  command -v npm >/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null; }
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private": true}' > "$TOOLS/package.json"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error '@kubernetes-models/prometheus-operator@6' >/dev/null
  echo "prometheus-operator schemas: installed ($TOOLS)"
fi
echo "test tools ready"
