//! Running a planned pipeline on one micro-batch at a time.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{cast, max};
use arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use datafusion::physical_plan::collect;
use notiflow_connector::{OutRecord, Record};

use super::plan::{Pipeline, Stage};
use crate::config::TopicsConfig;
use crate::dlq::{self, Rejected};
use crate::job::{BatchProcessor, RunTotals};
use crate::sql::BadData;

/// A pipeline with its per-run state: watermarks and totals.
pub struct PipelineRun {
    pub pipeline: Pipeline,
    pub events_topic: Arc<str>,
    pub totals: RunTotals,
    /// Per source, the highest watermark seen (nanoseconds).
    watermarks: Vec<i64>,
    dlq_topics: Vec<Arc<str>>,
    sink_topics: Vec<Arc<str>>,
}

impl PipelineRun {
    /// Topic names in the SQL are mapped through `topics.rename`.
    pub fn new(mut pipeline: Pipeline, topics: &TopicsConfig) -> Self {
        for source in &mut pipeline.sources {
            source.kafka.topic = topics.resolve(&source.kafka.topic);
            source.kafka.dlq_topic = topics.resolve(&source.kafka.dlq_topic);
        }
        for sink in &mut pipeline.sinks {
            sink.kafka.topic = topics.resolve(&sink.kafka.topic);
        }
        let watermarks = vec![i64::MIN; pipeline.sources.len()];
        let dlq_topics = pipeline.sources.iter().map(|s| Arc::from(s.kafka.dlq_topic.as_str())).collect();
        let sink_topics = pipeline.sinks.iter().map(|s| Arc::from(s.kafka.topic.as_str())).collect();
        let events_topic = Arc::from(topics.resolve(&topics.events).as_str());
        PipelineRun { pipeline, events_topic, totals: RunTotals::default(), watermarks, dlq_topics, sink_topics }
    }

    /// Every topic the pipeline reads.
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.pipeline.sources.iter().map(|s| s.kafka.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Every topic the pipeline writes.
    pub fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.sink_topics.iter().chain(&self.dlq_topics).map(|t| t.to_string()).collect();
        topics.push(self.events_topic.to_string());
        topics.sort();
        topics.dedup();
        topics
    }

    fn reject(&mut self, source: usize, record: &Record, rejected: Rejected<'_>, out: &mut Vec<OutRecord>) {
        let dlq_topic = self.dlq_topics[source].clone();
        out.push(dlq::dead_letter(record, &rejected, &dlq_topic));
        out.push(dlq::event_record(&dlq::rejected_event(record, &rejected, &dlq_topic), &self.events_topic));
        self.totals.count_dead_letter(rejected.reason);
    }

    /// Decodes the records of each source into its feed; returns which sources got rows.
    fn load_sources(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<Vec<bool>> {
        let mut by_topic: HashMap<&str, Vec<&Record>> = HashMap::new();
        for record in records {
            by_topic.entry(record.topic.as_ref()).or_default().push(record);
        }
        let mut active = vec![false; self.pipeline.sources.len()];
        for s in 0..self.pipeline.sources.len() {
            let mut mine: Vec<&Record> = by_topic.get(self.pipeline.sources[s].kafka.topic.as_str()).cloned().unwrap_or_default();
            if let Some(contract) = &self.pipeline.sources[s].contract {
                let mut rejected = Vec::new();
                mine.retain(|r| match contract.check(r.key.as_deref(), r.payload.as_deref()) {
                    Ok(_) => true,
                    Err(rejection) => {
                        rejected.push((*r, rejection));
                        false
                    }
                });
                for (record, rejection) in rejected {
                    let detail = Rejected {
                        reason: rejection.reason.as_str(),
                        error: &rejection.error,
                        tenant: rejection.tenant.as_deref(),
                        request_id: rejection.request_id.as_deref(),
                    };
                    self.reject(s, record, detail, out);
                }
            }
            let source = &self.pipeline.sources[s];
            let decoded = source.decoder.decode(&mine);
            let bad_data = source.kafka.bad_data;
            let name = source.name.clone();
            for (i, error) in &decoded.bad {
                match bad_data {
                    BadData::Dlq => {
                        let detail = Rejected { reason: "decode_error", error, tenant: None, request_id: None };
                        self.reject(s, mine[*i], detail, out);
                    }
                    BadData::Drop => metrics::counter!("notiflow_bad_data_dropped_total", "table" => name.clone()).increment(1),
                    BadData::Fail => anyhow::bail!(
                        "table {name}: record {} cannot be decoded ({error}) and bad_data = 'fail'",
                        dlq::source_of(mine[*i])
                    ),
                }
            }
            let batch = decoded.batch;
            if batch.num_rows() > 0 {
                active[s] = true;
                let wm = self.pipeline.sources[s].watermark.evaluate(&batch)?.into_array(batch.num_rows())?;
                let wm = cast(&wm, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
                if let Some(max_wm) = max(wm.as_primitive::<TimestampNanosecondType>()) {
                    self.watermarks[s] = self.watermarks[s].max(max_wm);
                }
                self.pipeline.sources[s].feed.set(vec![batch]);
            } else {
                self.pipeline.sources[s].feed.clear();
            }
        }
        Ok(active)
    }

    /// Runs every flow that has new input; returns its output batches per flow.
    async fn run_flows(&mut self, active: &[bool]) -> anyhow::Result<Vec<(usize, Vec<RecordBatch>)>> {
        let task_ctx = self.pipeline.ctx.task_ctx();
        let mut results = Vec::new();
        for f in 0..self.pipeline.flows.len() {
            let flow = &mut self.pipeline.flows[f];
            if !flow.sources.iter().any(|&s| active[s]) {
                continue;
            }
            let watermark = flow.sources.iter().map(|&s| self.watermarks[s]).min().unwrap_or(i64::MIN);
            let mut outputs: Vec<Vec<RecordBatch>> = Vec::with_capacity(flow.stages.len());
            for stage in flow.stages.iter_mut() {
                let produced = match stage {
                    Stage::Segment { plan } => collect(plan.clone(), task_ctx.clone()).await?,
                    Stage::RowNumber { input, op, output, .. } => {
                        let mut passed = Vec::new();
                        for batch in &outputs[*input] {
                            passed.push(op.process_batch(batch)?);
                        }
                        op.advance_watermark(watermark);
                        output.set(passed.clone());
                        passed
                    }
                };
                outputs.push(produced);
            }
            for stage in &flow.stages {
                if let Stage::RowNumber { output, .. } = stage {
                    output.clear();
                }
            }
            results.push((flow.sink, outputs.pop().unwrap_or_default()));
        }
        Ok(results)
    }
}

impl BatchProcessor for PipelineRun {
    async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        let active = self.load_sources(records, out)?;
        let results = self.run_flows(&active).await;
        self.pipeline.sources.iter().for_each(|s| s.feed.clear());
        for (sink, batches) in results? {
            let topic = self.sink_topics[sink].clone();
            let encoder = &self.pipeline.sinks[sink].encoder;
            let mut written = 0;
            for batch in &batches {
                for (key, payload) in encoder.encode(batch)? {
                    out.push(OutRecord { topic: topic.clone(), key, payload, headers: vec![] });
                    written += 1;
                }
            }
            *self.totals.dispatched.entry(self.pipeline.sinks[sink].name.clone()).or_default() += written;
        }
        Ok(())
    }
}
