#!/usr/bin/env bash
# Three volna nodes and a Redis on this machine, for development (docs/cluster.md). Needs
# Debian's redis-server (apt-get install redis-server). Nodes listen on 127.0.0.1: HTTP 8081-8083
# (the demo page on each), media UDP 50000/50100/50200 (one port per worker from there), QUIC
# 4434-4436, relay links 7001-7003; Redis on 6390. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
cargo build --bin volna
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
for n in 1 2 3; do
  target/debug/volna --redis redis://127.0.0.1:6390 --node-id "node$n" \
    --http "127.0.0.1:808$n" --media "127.0.0.1:50$((n - 1))00" \
    --quic "127.0.0.1:443$((n + 3))" --relay "127.0.0.1:700$n" &
  pids+=($!)
done
sleep 2
echo "cluster up: http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083 (GET /cluster on any)"
wait
