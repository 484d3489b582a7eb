# The notiflow image: one binary for every service in docker-compose.yml, with
# what it reads at run time (the SQL stages, the UDF sources and libraries,
# the report SQL, the examples). Built in stages so a code change rebuilds
# only our crates: dependencies are cooked from a recipe (cargo-chef), the
# UDFs (their own Cargo workspace) only when udfs/ changes.
# pipeline/tests/it/stack.rs lays out this file system from the COPY lines
# below and runs every compose service on it: keep them plain `COPY src dest`.

ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --version 0.1.77 --locked
WORKDIR /src

# The dependency graph only (Cargo.toml / Cargo.lock of every crate).
FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Dependencies first (cached until Cargo.lock or a manifest changes), then our code.
# Bundled librdkafka needs make, a C toolchain and libssl-dev (all in the rust image).
FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p notiflow
COPY . .
RUN cargo build --release --locked -p notiflow --bin notiflow

# The UDF libraries (arrow 51, a workspace of their own).
FROM ${RUST_IMAGE} AS udfs
WORKDIR /src
COPY udfs udfs
RUN NOTIFLOW_UDF_TARGET=/src/udfs/target bash udfs/build.sh \
 && mkdir /udfs && cp udfs/target/release/*.so /udfs/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/notiflow --no-create-home notiflow \
 && install -d -o 10001 -g 10001 /var/lib/notiflow /var/lib/notiflow/archive
COPY --from=build /src/target/release/notiflow /usr/local/bin/notiflow
COPY --from=udfs /udfs/ /usr/lib/notiflow/udfs/
COPY sql /usr/share/notiflow/sql
COPY udfs /usr/share/notiflow/udfs
COPY dashboards/reports /usr/share/notiflow/dashboards/reports
COPY examples /usr/share/notiflow/examples
COPY config/notiflow.compose.toml /etc/notiflow/notiflow.toml
# Relative defaults (sql, udfs, dashboards/reports) resolve here.
WORKDIR /usr/share/notiflow
ENV NOTIFLOW_UDF_LIB_DIR=/usr/lib/notiflow/udfs \
    NOTIFLOW_CONFIG=/etc/notiflow/notiflow.toml
USER 10001
VOLUME ["/var/lib/notiflow"]
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["notiflow", "probe"]
ENTRYPOINT ["notiflow"]
CMD ["run"]
