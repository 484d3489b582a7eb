# Builds the notiflow binary (bundled librdkafka needs a C toolchain and make).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p notiflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/notiflow /usr/local/bin/notiflow
USER 10001
ENTRYPOINT ["/usr/local/bin/notiflow"]
