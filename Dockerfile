# Build stage: release binary of the relay.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest
COPY configs ./configs
# The demo page, embedded in the binary.
COPY web ./web
RUN cargo build --release --locked --bin volna

# Run stage: the binary and its configuration, nothing else.
FROM debian:bookworm-slim
RUN useradd --system --no-create-home volna
COPY --from=build /src/target/release/volna /usr/local/bin/volna
# The production config: set what it leaves as placeholders with VOLNA_<SECTION>_<KEY>
# variables (VOLNA_AUTH_KEYS, VOLNA_MEDIA_ADVERTISE, the QUIC and TURN certificate files,
# VOLNA_TURN_SECRET, VOLNA_TURN_HOST), or mount
# your own file here.
COPY configs/production.toml /etc/volna/volna.toml
# In a container the runtime publishes the HTTP port: listen on every address of its own.
ENV VOLNA_HTTP_LISTEN=0.0.0.0:8080
USER volna
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s --retries=3 \
  CMD ["volna", "--config", "/etc/volna/volna.toml", "health"]
# HTTP signalling; media, one UDP port per worker from media.listen's, and the same numbers over
# TCP (ICE-TCP); RTP over QUIC; TURN on UDP and TCP 3478 and TLS 443 (the container's own
# network lets an unprivileged process bind 443; with host networking, grant
# CAP_NET_BIND_SERVICE or move turn.tls).
EXPOSE 8080/tcp 50000-50015/udp 50000-50015/tcp 4433/udp 3478/udp 3478/tcp 443/tcp
ENTRYPOINT ["volna", "--config", "/etc/volna/volna.toml"]
