//! notiflow: the streaming engine and the `notiflow` binary.

pub mod config;
pub mod contract;
pub mod demo;
pub mod dlq;
pub mod engine;
pub mod events;
pub mod job;
pub mod metrics_http;
pub mod report;
pub mod samples;
pub mod sql;
pub mod validate_route;

use notiflow_connector::{BatchLimits, TopicSpec};
use std::time::Duration;

use config::Config;

/// Every topic the request pipeline reads or writes.
pub fn topic_specs(config: &Config) -> Vec<TopicSpec> {
    let t = &config.topics;
    let mut names = vec![t.requests.clone(), t.dlq.clone(), t.events.clone()];
    names.extend(["high", "normal", "low"].map(|p| t.dispatch(p)));
    names.into_iter().map(|name| TopicSpec::new(name, t.partitions)).collect()
}

pub fn batch_limits(config: &Config) -> BatchLimits {
    BatchLimits {
        max_records: config.pipeline.batch_max_records,
        max_wait: Duration::from_millis(config.pipeline.batch_max_wait_ms),
    }
}

pub fn validate_route_stage(config: &Config) -> validate_route::ValidateRoute {
    let contract = contract::Contract::new(config.tenants.iter().map(|t| t.id.clone()), config.pipeline.max_request_bytes);
    validate_route::ValidateRoute::new(contract, &config.topics)
}
