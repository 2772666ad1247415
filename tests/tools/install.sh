#!/usr/bin/env bash
# Installs what the deploy/Kubernetes/Prometheus tests need; idempotent (a second run only
# checks, in about a second). Run as root on Debian 12 with Debian, PyPI and npm reachable.
#
#   prometheus + promtool   Debian package `prometheus`      (prometheus_e2e.rs, deploy_manifests.rs)
#   kubernetes-validate     PyPI, ships the Kubernetes OpenAPI schemas (validates offline)
#   PyYAML                  PyPI (kubernetes-validate's dependency; the tests read YAML with it)
#   prometheus-client       PyPI, its OpenMetrics parser (prometheus_e2e.rs)
#   @kubernetes-models/prometheus-operator
#                           npm, the ServiceMonitor/PrometheusRule CRD schemas, installed under
#                           $CHAINPROBE_TEST_TOOLS (default /opt/chainprobe-test-tools)
#   openssl                 Debian (usually present)
#   curl                    Debian (usually present; tls.rs drives OpenSSL handshakes with it)
#   systemd-analyze         Debian package systemd (usually present)
#   objcopy                 Debian packages binutils (usually present with gcc) and
#                           binutils-aarch64-linux-gnu (aarch64-linux-gnu-objcopy)
#
# The tests fail (not skip) with a pointer to this script when a tool is missing.
set -euo pipefail
TOOLS=${CHAINPROBE_TEST_TOOLS:-/opt/chainprobe-test-tools}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# apt-get install, with `apt-get update` first only when the package lists are missing or stale.
apt_install() {
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

# pip install into the python3 on PATH (Debian's own python3 needs --break-system-packages).
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}

# 1. Prometheus server and promtool (Debian).
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus: present ($(promtool --version 2>&1 | head -1))"
else
  # The package's postinst may try to start the service; on a machine without systemd as init
  # that fails harmlessly. The tests run their own server on 127.0.0.1.
  apt_install prometheus
  echo "prometheus: installed ($(promtool --version 2>&1 | head -1))"
fi
# Debian starts a system Prometheus on :9090 where systemd runs; the tests do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# 2. kubernetes-validate (PyPI), with the schemas of current Kubernetes releases inside.
# The tests run it as `python3 -m kubernetes_validate` (no dependence on PATH or pyenv shims).
if python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "kubernetes-validate: present ($(python3 -m kubernetes_validate --version 2>&1 | tail -1))"
else
  pip_install 'kubernetes-validate>=1.33' pyyaml
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  echo "kubernetes-validate: installed ($(python3 -m kubernetes_validate --version 2>&1 | tail -1))"
fi

# 2b. prometheus-client (PyPI): its OpenMetrics parser checks chainprobe's OpenMetrics exposition
#     (promtool 2.42 lints the text format only).
if python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  echo "prometheus-client: present"
else
  pip_install 'prometheus-client>=0.20'
  echo "prometheus-client: installed"
fi

# 3. Prometheus Operator CRD schemas (npm).
if [ -f "$TOOLS/node_modules/@kubernetes-models/prometheus-operator/package.json" ]; then
  echo "prometheus-operator schemas: present ($TOOLS)"
else
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private": true}' > "$TOOLS/package.json"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error '@kubernetes-models/prometheus-operator@6' >/dev/null
  echo "prometheus-operator schemas: installed ($TOOLS)"
fi
# 4. openssl (k8s_api.rs makes a throwaway CA and server certificate with it; tls.rs runs
#    s_server / s_client).
if command -v openssl >/dev/null 2>&1; then
  echo "openssl: present"
else
  apt_install openssl
  echo "openssl: installed"
fi
# 4b. curl (tls.rs: OpenSSL client handshakes against the Go fixture server).
if command -v curl >/dev/null 2>&1; then
  echo "curl: present"
else
  apt_install curl
  echo "curl: installed"
fi
# 5. systemd-analyze (deploy_manifests.rs verifies deploy/chainprobe.service with it).
if command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze: present"
else
  apt_install systemd
  echo "systemd-analyze: installed"
fi
# 6. objcopy for amd64 and arm64 (goinspect_matrix.rs removes .go.buildinfo from fixtures, as
#    some release builds do).
if command -v objcopy >/dev/null 2>&1 && command -v aarch64-linux-gnu-objcopy >/dev/null 2>&1; then
  echo "objcopy: present"
else
  apt_install binutils binutils-aarch64-linux-gnu
  echo "objcopy: installed"
fi
echo "test tools ready"
