//! The streaming SQL engine: plans a directory of SQL once (`plan`), then runs
//! it over micro-batches (`runtime`), with notiflow's own stateful operators
//! where a stream needs state (`row_number`).

pub mod checkpoint;
pub mod codec;
pub mod feed;
pub mod functions;
pub mod hold;
pub mod interval_join;
pub mod json_fields;
pub mod lookup;
pub mod plan;
pub mod row_number;
pub mod runtime;
pub mod state_bytes;
pub mod udf;
pub mod window_agg;

pub use plan::{PlanEnv, Pipeline, Stage, plan};
pub use runtime::{Checkpointing, PipelineRun};

use datafusion::physical_plan::displayable;

/// The operator graph of each flow, as `notiflow explain` prints it.
pub fn explain(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    for (i, source) in pipeline.sources.iter().enumerate() {
        out.push_str(&format!("source {i}: {} <- kafka topic {}\n", source.name, source.kafka.topic));
    }
    for (i, lookup) in pipeline.lookups.iter().enumerate() {
        out.push_str(&format!("lookup {i}: {} <- compacted kafka topic {} (key {})\n", lookup.name, lookup.kafka.topic, lookup.key_field));
    }
    for (i, sink) in pipeline.sinks.iter().enumerate() {
        out.push_str(&format!("sink {i}: {} -> kafka topic {}\n", sink.name, sink.kafka.topic));
    }
    for view in &pipeline.shared {
        out.push_str(&format!("\nshared view {} (computed once per batch)\n", view.name));
        describe_stages(&view.stages, &mut out);
    }
    for (f, flow) in pipeline.flows.iter().enumerate() {
        let sink = &pipeline.sinks[flow.sink].name;
        out.push_str(&format!("\nflow {f} ({}): INSERT INTO {sink}\n", flow.location));
        describe_stages(&flow.stages, &mut out);
    }
    out
}

fn describe_stages(stages: &[Stage], out: &mut String) {
    for (s, stage) in stages.iter().enumerate() {
        match stage {
            Stage::Segment { plan } => {
                out.push_str(&format!("  stage {s}: stateless segment\n"));
                for line in displayable(plan.as_ref()).indent(false).to_string().lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            Stage::RowNumber { input, describe, .. } | Stage::WindowAggregate { input, describe, .. } | Stage::LookupJoin { input, describe, .. } => {
                out.push_str(&format!("  stage {s}: {describe} (input: stage {input})\n"));
            }
            Stage::IntervalJoin { left, right, describe, .. } => {
                out.push_str(&format!("  stage {s}: {describe} (inputs: stages {left}, {right})\n"));
            }
        }
    }
}
