# Build stage: release binary of the relay.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY loadtest ./loadtest
COPY configs ./configs
RUN cargo build --release --locked --bin volna

# Run stage: the binary and its configuration, nothing else.
FROM debian:bookworm-slim
RUN useradd --system --no-create-home volna
COPY --from=build /src/target/release/volna /usr/local/bin/volna
COPY configs/dev.toml /etc/volna/volna.toml
USER volna
EXPOSE 8080/tcp 50000/udp
ENTRYPOINT ["volna", "--config", "/etc/volna/volna.toml"]
