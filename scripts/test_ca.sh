#!/usr/bin/env bash
# Makes a throwaway CA and a server certificate for 127.0.0.1/localhost in DIR
# (ca.crt, server.crt, server.key), for the TLS tests: ClickHouse's https_port
# (services.sh) and the TLS terminator in front of tansu (pipeline/tests/it/tls.rs).
# RSA 2048 and v3 extensions: what rustls/webpki and ClickHouse 18.16's OpenSSL both accept.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=notiflow test CA $(basename "$dir")" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
  "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt 2>/dev/null
chmod 600 ca.key server.key
