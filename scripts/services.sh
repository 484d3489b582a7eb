#!/usr/bin/env bash
# Installs (when missing) and starts the real services the tests use, on free
# 127.0.0.1 ports with state in a temp dir:
#   - tansu, a Kafka-compatible broker (crates.io; memory storage)
#   - Debian's clickhouse-server (18.16) with a config and users file of our own,
#     also serving HTTPS with a certificate of a test CA made here (scripts/test_ca.sh)
#   - moto's S3 server (PyPI)
# and installs the test tools Debian's chromium and socat, chdb and schemathesis (PyPI).
# Source it, then call `services_start`; it exports NOTIFLOW_TEST_KAFKA,
# NOTIFLOW_TEST_CLICKHOUSE_URL, NOTIFLOW_TEST_CLICKHOUSE_USERS_D,
# NOTIFLOW_TEST_CLICKHOUSE_HTTPS_URL, NOTIFLOW_TEST_CLICKHOUSE_CA,
# NOTIFLOW_TEST_S3_ENDPOINT, NOTIFLOW_TEST_CHROMIUM and
# NOTIFLOW_TEST_SCHEMATHESIS, and registers `services_stop` on exit.
set -euo pipefail

services_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

services_wait_tcp() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "services: $4 did not open $1:$2 in $3 s" >&2; return 1; fi
    sleep 0.2
  done
}

services_install() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "services: installing tansu (first build takes ~16 min on 2 cores)"
    # The default features have no storage engine: dynostore gives memory://, libsql gives sqlite://.
    # Pinned: a new release may change its features or behaviour (see ../shared/ENVIRONMENT.md).
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
  fi
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    echo "services: installing Debian's clickhouse-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
  fi
  # The Kafka TLS test puts a TLS terminator in front of tansu.
  if ! command -v socat >/dev/null 2>&1; then
    echo "services: installing Debian's socat"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq socat >/dev/null
  fi
  # The dashboard's browser test renders the page in headless Chromium.
  if ! command -v chromium >/dev/null 2>&1; then
    echo "services: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  fi
  # S3 for the Parquet archive's S3 test: moto's S3 server (PyPI), speaking the S3 wire protocol.
  if ! command -v moto_server >/dev/null 2>&1; then
    echo "services: installing moto[server] (an S3-compatible server) from PyPI"
    python3 -m pip install -q "moto[server]==5.2.1"
  fi
  # The DDL and reports on a current ClickHouse: chDB (PyPI) embeds one, no server needed.
  if ! python3 -c 'import chdb' 2>/dev/null; then
    echo "services: installing chdb (an embedded current ClickHouse) from PyPI"
    python3 -m pip install -q "chdb==4.4.0"
  fi
  # The gateway's fuzz test: schemathesis (PyPI) generates requests from docs/openapi.json.
  if ! command -v st >/dev/null 2>&1; then
    echo "services: installing schemathesis (API fuzzing) from PyPI"
    python3 -m pip install -q "schemathesis==4.32.5"
  fi
}

services_start() {
  services_install
  SERVICES_DIR=$(mktemp -d -t notiflow-services.XXXXXX)
  export SERVICES_DIR
  trap services_stop EXIT

  local kafka_port; kafka_port=$(services_free_port)
  (cd "$SERVICES_DIR" && exec tansu broker \
      --listener-url "tcp://127.0.0.1:$kafka_port" \
      --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
      --storage-engine memory://tansu/ >"$SERVICES_DIR/tansu.log" 2>&1) &
  echo $! >"$SERVICES_DIR/tansu.pid"
  services_wait_tcp 127.0.0.1 "$kafka_port" 60 tansu || { tail -20 "$SERVICES_DIR/tansu.log" >&2; return 1; }
  export NOTIFLOW_TEST_KAFKA="127.0.0.1:$kafka_port"

  local http_port tcp_port https_port; http_port=$(services_free_port); tcp_port=$(services_free_port); https_port=$(services_free_port)
  local ch="$SERVICES_DIR/clickhouse"
  mkdir -p "$ch/data" "$ch/tmp" "$ch/log" "$ch/user_files" "$ch/format_schemas" "$ch/users.d"
  bash "$(dirname "${BASH_SOURCE[0]}")/test_ca.sh" "$ch/tls"
  # Our own copy of the users file: tests add users (tenant analysts with row filters) in users.d.
  cp /etc/clickhouse-server/users.xml "$ch/users.xml"
  cat >"$ch/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$ch/log/server.log</log><errorlog>$ch/log/error.log</errorlog></logger>
  <http_port>$http_port</http_port>
  <tcp_port>$tcp_port</tcp_port>
  <https_port>$https_port</https_port>
  <openSSL><server>
    <certificateFile>$ch/tls/server.crt</certificateFile>
    <privateKeyFile>$ch/tls/server.key</privateKeyFile>
    <verificationMode>none</verificationMode>
    <loadDefaultCAFile>false</loadDefaultCAFile>
    <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
  </server></openSSL>
  <listen_host>127.0.0.1</listen_host>
  <path>$ch/data/</path>
  <tmp_path>$ch/tmp/</tmp_path>
  <user_files_path>$ch/user_files/</user_files_path>
  <format_schema_path>$ch/format_schemas/</format_schema_path>
  <users_config>$ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
  (cd "$ch" && exec clickhouse-server --config-file="$ch/config.xml" >"$ch/log/stdout.log" 2>&1) &
  echo $! >"$SERVICES_DIR/clickhouse.pid"
  local deadline=$((SECONDS + 60))
  until [ "$(curl -s "http://127.0.0.1:$http_port/ping" 2>/dev/null)" = "Ok." ]; do
    if ((SECONDS > deadline)); then
      echo "services: clickhouse did not answer on :$http_port" >&2
      tail -20 "$ch/log/error.log" "$ch/log/stdout.log" >&2 || true
      return 1
    fi
    sleep 0.3
  done
  export NOTIFLOW_TEST_CLICKHOUSE_URL="http://127.0.0.1:$http_port"
  export NOTIFLOW_TEST_CLICKHOUSE_USERS_D="$ch/users.d"
  export NOTIFLOW_TEST_CLICKHOUSE_HTTPS_URL="https://127.0.0.1:$https_port"
  export NOTIFLOW_TEST_CLICKHOUSE_CA="$ch/tls/ca.crt"

  local s3_port; s3_port=$(services_free_port)
  (cd "$SERVICES_DIR" && exec moto_server -H 127.0.0.1 -p "$s3_port" >"$SERVICES_DIR/moto.log" 2>&1) &
  echo $! >"$SERVICES_DIR/moto.pid"
  services_wait_tcp 127.0.0.1 "$s3_port" 60 moto || { tail -20 "$SERVICES_DIR/moto.log" >&2; return 1; }
  export NOTIFLOW_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  NOTIFLOW_TEST_CHROMIUM="$(command -v chromium)"
  export NOTIFLOW_TEST_CHROMIUM
  NOTIFLOW_TEST_SCHEMATHESIS="$(command -v st)"
  export NOTIFLOW_TEST_SCHEMATHESIS
  echo "services: tansu at $NOTIFLOW_TEST_KAFKA, clickhouse at $NOTIFLOW_TEST_CLICKHOUSE_URL, s3 at $NOTIFLOW_TEST_S3_ENDPOINT (state in $SERVICES_DIR)"
}

services_stop() {
  [ -n "${SERVICES_DIR:-}" ] || return 0
  for name in tansu clickhouse moto; do
    if [ -f "$SERVICES_DIR/$name.pid" ]; then
      kill "$(cat "$SERVICES_DIR/$name.pid")" 2>/dev/null || true
    fi
  done
  sleep 0.5
  for name in tansu clickhouse moto; do
    if [ -f "$SERVICES_DIR/$name.pid" ]; then
      kill -9 "$(cat "$SERVICES_DIR/$name.pid")" 2>/dev/null || true
    fi
  done
  rm -rf "$SERVICES_DIR"
  SERVICES_DIR=
}
