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
COPY configs/dev.toml /etc/volna/volna.toml
USER volna
# HTTP signalling; media, one UDP port per worker from media.listen's; RTP over QUIC.
EXPOSE 8080/tcp 50000-50015/udp 4433/udp
ENTRYPOINT ["volna", "--config", "/etc/volna/volna.toml"]
