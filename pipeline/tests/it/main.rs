//! Integration tests: one binary so the engine links once. Tests that need a
//! service read its address from the environment that `scripts/test.sh` sets
//! and fail (never skip) when it is missing.

mod archive_s3;
mod clickhouse_smoke;
mod cluster;
mod compose;
mod current_clickhouse;
mod dashboard;
mod deliver;
mod demo;
mod exactly_once;
mod gateway;
mod inbox;
mod kafka_pipeline;
mod outage;
mod receipts;
mod semantics;
mod sql_engine;
mod stack;
mod support;
mod tls;
mod udfs;
mod warehouse;
