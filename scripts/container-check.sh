#!/usr/bin/env bash
# The image's runtime stage, checked where no base-image registry is reachable: a
# debian:bookworm-slim made here (debootstrap, then docker import), the runtime stage of the
# Dockerfile built on it with the release binary built outside (the rust:1.95-bookworm build
# stage is not run), then run with host networking on loopback only: its health check, the
# placeholder key refused, the API behind a token, SIGTERM. Needs root, apt and deb.debian.org;
# starts dockerd without a bridge or iptables rules if none runs. Not part of scripts/test.sh.
set -euo pipefail
apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
pgrep dockerd >/dev/null || (dockerd --bridge=none --iptables=false --ip-masq=false > /tmp/dockerd.log 2>&1 &)
for i in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  rm -rf /tmp/rootfs
  debootstrap --variant=minbase bookworm /tmp/rootfs http://deb.debian.org/debian > /tmp/debootstrap.log 2>&1
  tar -C /tmp/rootfs -c . | docker import - debian:bookworm-slim
fi
cd "$(dirname "$0")/.."
cargo build --release --locked --bin volna 2>&1 | tail -1
ctx=$(mktemp -d)
mkdir -p "$ctx/target/release" "$ctx/configs"
cp target/release/volna "$ctx/target/release/"
cp configs/production.toml "$ctx/configs/"
{ sed -n '/^FROM debian:bookworm-slim/,$p' Dockerfile | sed 's|COPY --from=build /src/target/release/volna|COPY target/release/volna|'; } > "$ctx/Dockerfile"
echo "--- runtime stage as built:"; cat "$ctx/Dockerfile"
docker build -q -t volna-runtime-check "$ctx"
docker rm -f volna-check >/dev/null 2>&1 || true
echo "--- without VOLNA_AUTH_KEYS (the placeholder key):"
code=0; docker run --rm --network host volna-runtime-check || code=$?
echo "exit $code"; [ "$code" = 2 ]
docker run -d --name volna-check --network host \
  -e VOLNA_HTTP_LISTEN=127.0.0.1:18090 -e VOLNA_MEDIA_LISTEN=127.0.0.1:50100 -e VOLNA_MEDIA_ADVERTISE= \
  -e VOLNA_QUIC_LISTEN=127.0.0.1:4439 -e VOLNA_QUIC_CERT_FILE= -e VOLNA_QUIC_KEY_FILE= \
  -e VOLNA_TURN_UDP=127.0.0.1:3479 -e VOLNA_TURN_TCP=127.0.0.1:3479 -e VOLNA_TURN_TLS=127.0.0.1:5350 \
  -e VOLNA_TURN_TLS_CERT= -e VOLNA_TURN_TLS_KEY= -e VOLNA_TURN_SECRET=container-check-turn-0123456789 \
  -e VOLNA_AUTH_KEYS=container-check-key-0123456789 volna-runtime-check >/dev/null
for i in $(seq 60); do
  s=$(docker inspect --format '{{.State.Health.Status}}' volna-check)
  [ "$s" = healthy ] && break
  sleep 1
done
echo "--- health after ${i} s: $s"; [ "$s" = healthy ]
docker inspect --format 'user={{.Config.User}} healthcheck={{.Config.Healthcheck.Test}}' volna-check
curl -fsS http://127.0.0.1:18090/health
T=$(docker exec volna-check volna --config /etc/volna/volna.toml token --admin --ttl 60)
echo "--- /api/v1/rooms: $(curl -fsS -H "Authorization: Bearer $T" http://127.0.0.1:18090/api/v1/rooms)"
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18090/api/v1/rooms)
echo "--- /api/v1/rooms without a token: $code"; [ "$code" = 401 ]
docker logs volna-check 2>&1 | head -3
docker stop -t 10 volna-check >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' volna-check)
echo "--- exit status after docker stop: $code"; [ "$code" = 0 ]
docker rm volna-check >/dev/null
echo "container check passed"
