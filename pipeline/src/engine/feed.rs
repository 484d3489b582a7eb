//! A feed is where the engine hands batches to a planned DataFusion segment:
//! the segment is planned once, over a table whose one partition yields
//! whatever the feed holds when the plan is executed.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

#[derive(Debug, Clone)]
pub struct Feed {
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl Feed {
    pub fn new(schema: SchemaRef) -> Self {
        Feed { schema, batches: Arc::default() }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self.batches.lock().expect("feed poisoned") = batches;
    }

    pub fn clear(&self) {
        self.batches.lock().expect("feed poisoned").clear();
    }

    /// A table provider over this feed, for planning.
    pub fn table(&self) -> Arc<StreamingTable> {
        let partition: Arc<dyn PartitionStream> = Arc::new(self.clone());
        Arc::new(StreamingTable::try_new(self.schema.clone(), vec![partition]).expect("feed schema matches its partition"))
    }
}

impl PartitionStream for Feed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.lock().expect("feed poisoned").clone();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(batches.into_iter().map(Ok))))
    }
}
