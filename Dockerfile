# Slipway's binaries in one image (used by docker-compose.yml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && cp target/release/slipway-scheduler target/release/slipway-runner target/release/slipway /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/slipway-scheduler /usr/local/bin/slipway-runner /usr/local/bin/slipway /usr/local/bin/
USER 65534
