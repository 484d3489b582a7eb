//! From SQL definitions to a runnable pipeline, planned once at start.
//!
//! Each `INSERT` becomes a flow. DataFusion plans its query; the plan is then
//! cut at stateful nodes (the windowed row-number limit), which notiflow runs
//! itself, and every stateless piece between them is turned into a DataFusion
//! physical plan over feeds (see `feed.rs`). Anything that would need state
//! DataFusion keeps per query (unwindowed aggregates, joins, sorts) is refused
//! here with the statement's file:line.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::compute::can_cast_types;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::catalog::view::ViewTable;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, Operator, WindowFunctionDefinition};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
#[allow(deprecated)] // Its replacement (LoweredAggregateBuilder) is not re-exported by datafusion 55.
use datafusion::physical_planner::create_aggregate_expr_and_maybe_filter;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::codec::{
    LINEAGE_COLUMNS, OFFSET_COLUMN, PARTITION_COLUMN, SOURCE_COLUMN, SinkEncoder, SourceDecoder, TIMESTAMP_COLUMN, WATERMARK_COLUMN, is_hidden,
};
use super::feed::Feed;
use super::functions;
use super::row_number::{LineageColumns, RowNumberLimit, WindowKind};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use super::interval_join::{IntervalJoin, JoinSide, SideLineage};
use super::lookup::{LookupJoin, LookupTable};
use super::window_agg::{AggLineage, AggregateSpec, WindowAggregate};
use crate::contract::Contract;
use crate::sql::{Connector, Definition, KafkaTable, Location, PipelineSql, SqlError, TableRole, TableDef};

/// What the planner needs from `notiflow.toml`.
#[derive(Debug, Clone)]
pub struct PlanEnv {
    /// Tenants for `json.contract = 'notify.requests'`.
    pub tenants: Vec<String>,
    /// The live tenant registry, whose tenants may send too (`notiflow run`).
    pub registry: Option<crate::tenants::Registry>,
    pub max_request_bytes: usize,
    /// UDFs found in the UDF workspace (built or not).
    pub udfs: Vec<super::udf::UdfSource>,
}

pub struct SourceTable {
    pub name: String,
    pub kafka: KafkaTable,
    pub decoder: SourceDecoder,
    pub feed: Feed,
    /// The WATERMARK expression, evaluated per row into `_watermark`;
    /// `None` when it is the event time itself.
    pub watermark: Option<Arc<dyn PhysicalExpr>>,
    pub contract: Option<Contract>,
}

pub struct SinkTable {
    pub name: String,
    pub kafka: KafkaTable,
    pub encoder: SinkEncoder,
}

pub enum Stage {
    /// A stateless DataFusion plan over feeds.
    Segment { plan: Arc<dyn ExecutionPlan> },
    /// The windowed row-number limit over the output of stage `input`.
    RowNumber { input: usize, op: Box<RowNumberLimit>, output: Feed, describe: String },
    /// A tumbling/hopping window aggregate over the output of stage `input`.
    WindowAggregate { input: usize, op: Box<WindowAggregate>, output: Feed, describe: String },
    /// An interval join of the outputs of stages `left` and `right`.
    /// A join of the output of stage `input` with a lookup table.
    LookupJoin { input: usize, op: Box<LookupJoin>, output: Feed, describe: String },
    /// `left_sources`/`right_sources`: the source tables each side reads.
    IntervalJoin {
        left: usize,
        right: usize,
        left_sources: Vec<usize>,
        right_sources: Vec<usize>,
        op: Box<IntervalJoin>,
        output: Feed,
        describe: String,
    },
}

impl Stage {
    /// The operator's per-partition state, for stateful stages.
    pub fn unit_state(&mut self) -> Option<&mut dyn super::state_bytes::UnitState> {
        match self {
            Stage::RowNumber { op, .. } => Some(op.as_mut()),
            Stage::WindowAggregate { op, .. } => Some(op.as_mut()),
            Stage::IntervalJoin { op, .. } => Some(op.as_mut()),
            Stage::Segment { .. } | Stage::LookupJoin { .. } => None,
        }
    }

    /// The feed an operator stage writes for the segment after it.
    pub fn output(&self) -> Option<&Feed> {
        match self {
            Stage::Segment { .. } => None,
            Stage::RowNumber { output, .. }
            | Stage::WindowAggregate { output, .. }
            | Stage::LookupJoin { output, .. }
            | Stage::IntervalJoin { output, .. } => Some(output),
        }
    }
}

pub struct Flow {
    pub location: Location,
    /// Output ids from content instead of lineage (flows with joins, whose
    /// rows have two origins).
    pub content_ids: bool,
    pub sink: usize,
    /// Sources the flow reads (indexes into `Pipeline::sources`).
    pub sources: Vec<usize>,
    /// In execution order; the last stage's output goes to the sink.
    pub stages: Vec<Stage>,
}

pub struct Pipeline {
    pub name: String,
    pub ctx: SessionContext,
    pub sources: Vec<SourceTable>,
    pub sinks: Vec<SinkTable>,
    pub lookups: Vec<LookupTable>,
    /// Stateless views computed once per batch for every flow that reads them.
    pub shared: Vec<SharedView>,
    pub flows: Vec<Flow>,
    /// Rows UDFs failed on during the current batch.
    pub udf_failures: super::udf::UdfFailures,
}

/// A view over sources evaluated once per micro-batch into a feed that every
/// INSERT reading it scans (instead of each re-computing it, and, for a
/// stateful view, instead of each keeping its own copy of the state).
pub struct SharedView {
    pub name: String,
    /// Operators and segments as in a flow; the last one yields the view's rows.
    pub stages: Vec<Stage>,
    pub feed: Feed,
    pub sources: Vec<usize>,
}

/// Checkpoint ids of shared views' stage lists start here (flows use their index).
pub const SHARED_VIEW_IDS: u32 = 1 << 20;

impl Pipeline {
    /// Every list of stages with its checkpoint id and the sources it reads:
    /// shared views', then flows'.
    pub fn stage_lists_mut(&mut self) -> Vec<(u32, &mut Vec<Stage>, &Vec<usize>)> {
        let views = self.shared.iter_mut().enumerate().map(|(v, view)| (SHARED_VIEW_IDS + v as u32, &mut view.stages, &view.sources));
        let flows = self.flows.iter_mut().enumerate().map(|(f, flow)| (f as u32, &mut flow.stages, &flow.sources));
        views.chain(flows).collect()
    }
}

fn session() -> SessionContext {
    // One partition, no repartitioning: a micro-batch is small and ordered.
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_repartition_joins(false)
        .with_repartition_aggregations(false)
        .with_repartition_windows(false)
        .with_round_robin_repartition(false)
        .with_coalesce_batches(false);
    // Plain Utf8 end to end: JSON columns, keys and UDFs (whose FFI cannot
    // take Utf8View) all see the same string type.
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    functions::register(&ctx);
    ctx
}

pub async fn plan(sql: &PipelineSql, env: &PlanEnv) -> Result<Pipeline, SqlError> {
    let ctx = session();
    // UDFs: built ones are loaded; unbuilt ones are known by name so that a
    // query calling one fails validation with what to do.
    let mut unbuilt = Vec::new();
    let udf_failures = super::udf::UdfFailures::default();
    for udf in &env.udfs {
        if udf.library.exists() {
            let at = |m| SqlError::new(&Location { file: udf.library.display().to_string(), line: 0 }, m);
            if udf.aggregate {
                ctx.register_udaf(super::udf::load_aggregate(udf).map_err(at)?);
            } else {
                ctx.register_udf(super::udf::load(udf, &udf_failures).map_err(at)?);
            }
        } else {
            unbuilt.push(udf.name.clone());
        }
    }
    let mut pipeline = Pipeline {
        name: sql.name.clone(),
        ctx: ctx.clone(),
        sources: vec![],
        sinks: vec![],
        lookups: vec![],
        shared: vec![],
        flows: vec![],
        udf_failures,
    };
    let mut names: HashMap<String, Location> = HashMap::new();
    for statement in &sql.statements {
        let location = &statement.location;
        let name = match &statement.definition {
            Definition::Table(t) => Some(&t.name),
            Definition::View { name, .. } => Some(name),
            Definition::Insert { .. } => None,
        };
        if let Some(name) = name
            && let Some(first) = names.insert(name.clone(), location.clone())
        {
            return Err(SqlError::new(location, format!("{name} is already defined at {first}")));
        }
        if let Some(name) = unbuilt.iter().find(|u| calls(&statement.definition, u)) {
            return Err(SqlError::new(
                location,
                format!("UDF {name} is not built: run `bash udfs/build.sh` (or set NOTIFLOW_UDF_LIB_DIR to where lib{name}.so is)"),
            ));
        }
        match &statement.definition {
            Definition::Table(table) => add_table(&mut pipeline, table, location, env).await?,
            Definition::View { name, sql } => {
                ctx.sql(sql).await.map_err(|e| SqlError::new(location, clean(e)))?;
                if let Some(shared) = share_view(&pipeline, name, location).await? {
                    ctx.deregister_table(name.as_str()).map_err(|e| SqlError::new(location, clean(e)))?;
                    ctx.register_table(name.as_str(), shared.feed.table()).map_err(|e| SqlError::new(location, clean(e)))?;
                    pipeline.shared.push(shared);
                }
            }
            Definition::Insert { sink, query } => {
                let flow = plan_insert(&pipeline, sink, query, location).await?;
                pipeline.flows.push(flow);
            }
        }
    }
    if pipeline.flows.is_empty() {
        let location = sql.statements.first().map(|s| s.location.clone()).unwrap_or(Location { file: sql.name.clone(), line: 0 });
        return Err(SqlError::new(&location, "the pipeline has no INSERT INTO: nothing would run"));
    }
    Ok(pipeline)
}

async fn add_table(pipeline: &mut Pipeline, table: &TableDef, location: &Location, env: &PlanEnv) -> Result<(), SqlError> {
    let declared = declared_schema(&pipeline.ctx, table, location).await?;
    let Connector::Kafka(kafka) = &table.connector;
    match kafka.role {
        TableRole::Source => {
            let event_time_field = kafka.event_time_field.clone().or_else(|| table.watermark.as_ref().map(|w| w.column.clone()));
            if let Some(field) = &event_time_field
                && declared.field_with_name(field).is_err()
            {
                return Err(SqlError::new(location, format!("event_time_field {field}: no such column in {}", table.name)));
            }
            let decoder = SourceDecoder::new(pipeline.sources.len() as i32, &declared, &table.json_columns, event_time_field);
            let feed = Feed::new(decoder.schema().clone());
            pipeline
                .ctx
                .register_table(table.name.as_str(), feed.table())
                .map_err(|e| SqlError::new(location, clean(e)))?;
            let df_schema = DFSchema::try_from(decoder.schema().as_ref().clone()).map_err(|e| SqlError::new(location, clean(e)))?;
            let watermark_expr = match table.watermark.as_ref().and_then(|w| w.expr.as_ref()) {
                Some(sql) => Some(
                    pipeline
                        .ctx
                        .parse_sql_expr(sql, &df_schema)
                        .and_then(|e| pipeline.ctx.state().create_physical_expr(e, &df_schema))
                        .map_err(|e| SqlError::new(location, format!("WATERMARK expression: {}", clean(e))))?,
                ),
                None => None,
            };
            if let Some(wake) = &kafka.hold_wake {
                if declared.field_with_name(&wake.field).is_err() {
                    return Err(SqlError::new(location, format!("hold.wake_field {}: no such column in {}", wake.field, table.name)));
                }
                if !pipeline.lookups.iter().any(|l| l.name == wake.lookup) {
                    return Err(SqlError::new(
                        location,
                        format!("hold.wake_lookup {}: no lookup table of that name is defined before {}", wake.lookup, table.name),
                    ));
                }
            }
            let contract =
                kafka.contract.as_ref().map(|_| Contract::new(env.tenants.iter().cloned(), env.max_request_bytes).with_registry(env.registry.clone()));
            pipeline.sources.push(SourceTable {
                name: table.name.clone(),
                kafka: kafka.clone(),
                decoder,
                feed,
                watermark: watermark_expr,
                contract,
            });
        }
        TableRole::Lookup => {
            let key_field = kafka.lookup_key_field.clone().expect("options checked lookup.key_field");
            if declared.field_with_name(&key_field).is_err() {
                return Err(SqlError::new(location, format!("lookup.key_field {key_field}: no such column in {}", table.name)));
            }
            let decoder = SourceDecoder::new(-1, &declared, &table.json_columns, None);
            let feed = Feed::new(decoder.schema().clone());
            pipeline.ctx.register_table(table.name.as_str(), feed.table()).map_err(|e| SqlError::new(location, clean(e)))?;
            pipeline.lookups.push(LookupTable {
                name: table.name.clone(),
                kafka: kafka.clone(),
                decoder,
                key_field,
                state: Default::default(),
            });
        }
        TableRole::Sink => {
            if let Some(key) = &kafka.key_field
                && declared.field_with_name(key).is_err()
            {
                return Err(SqlError::new(location, format!("sink.key_field {key}: no such column in {}", table.name)));
            }
            pipeline.sinks.push(SinkTable {
                name: table.name.clone(),
                kafka: kafka.clone(),
                encoder: SinkEncoder::new(&declared, &table.json_columns, kafka.key_field.clone()),
            });
        }
    }
    Ok(())
}

/// The Arrow schema of `CREATE TABLE name (columns)`, as DataFusion types it.
async fn declared_schema(ctx: &SessionContext, table: &TableDef, location: &Location) -> Result<Schema, SqlError> {
    let plan = ctx.state().create_logical_plan(&table.columns_sql).await.map_err(|e| SqlError::new(location, clean(e)))?;
    let schema = match &plan {
        LogicalPlan::Ddl(ddl) => ddl.schema().as_arrow().clone(),
        other => other.schema().as_arrow().clone(),
    };
    if let Some(hidden) = schema.fields().iter().find(|f| is_hidden(f.name())) {
        return Err(SqlError::new(location, format!("column {}: names starting with _ are reserved for the engine", hidden.name())));
    }
    Ok(schema)
}

/// Whether a view or insert calls the function `name` (a word followed by `(`).
fn calls(definition: &Definition, name: &str) -> bool {
    let text = match definition {
        Definition::View { sql, .. } => sql.as_str(),
        Definition::Insert { query, .. } => query.as_str(),
        Definition::Table(_) => return false,
    };
    let lower = text.to_ascii_lowercase();
    lower.match_indices(&name.to_ascii_lowercase()).any(|(i, m)| {
        let before = lower[..i].chars().next_back();
        let after = lower[i + m.len()..].trim_start().chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && after == Some('(')
    })
}

/// Makes a view shared when it reads sources and its rows keep single-record
/// lineage (no joins); `None` keeps it an ordinary view (inlined into each
/// query that uses it).
async fn share_view(pipeline: &Pipeline, name: &str, location: &Location) -> Result<Option<SharedView>, SqlError> {
    let provider = pipeline.ctx.table_provider(name).await.map_err(|e| SqlError::new(location, clean(e)))?;
    let Some(view) = provider.downcast_ref::<ViewTable>() else { return Ok(None) };
    let state = pipeline.ctx.state();
    let Ok(analyzed) = state.analyzer().execute_and_check(view.logical_plan().clone(), state.config_options(), |_, _| {}) else {
        return Ok(None);
    };
    let mut lowering = Lowering { pipeline, stages: vec![], sources: vec![], location, content_ids: false };
    let Ok(lowered) = lowering.lower(&analyzed, None).await else { return Ok(None) };
    if lowering.content_ids || lowering.sources.is_empty() {
        return Ok(None);
    }
    let Lowering { mut stages, mut sources, .. } = lowering;
    sources.sort_unstable();
    sources.dedup();
    let plan = state.create_physical_plan(&lowered).await.map_err(|e| SqlError::new(location, clean(e)))?;
    let feed = Feed::new(plan.schema());
    stages.push(Stage::Segment { plan });
    Ok(Some(SharedView { name: name.to_string(), stages, feed, sources }))
}

async fn plan_insert(pipeline: &Pipeline, sink: &str, query: &str, location: &Location) -> Result<Flow, SqlError> {
    let err = |m: String| SqlError::new(location, m);
    let sink_index = pipeline.sinks.iter().position(|s| s.name == sink).ok_or_else(|| {
        let is_source = pipeline.sources.iter().any(|s| s.name == sink);
        err(if is_source { format!("{sink} is a source table; INSERT INTO needs a sink") } else { format!("no sink table {sink}") })
    })?;
    let state = pipeline.ctx.state();
    let logical = state.create_logical_plan(query).await.map_err(|e| err(clean(e)))?;
    // Type coercion first: aggregate and window expressions are planned from it.
    let logical = state.analyzer().execute_and_check(logical, state.config_options(), |_, _| {}).map_err(|e| err(clean(e)))?;
    let mut lowering = Lowering { pipeline, stages: vec![], sources: vec![], location, content_ids: false };
    let top = lowering.lower(&logical, None).await?;
    let physical = state.create_physical_plan(&top).await.map_err(|e| err(clean(e)))?;
    check_sink_columns(physical.schema(), &pipeline.sinks[sink_index], location)?;
    lowering.stages.push(Stage::Segment { plan: physical });
    let Lowering { stages, mut sources, content_ids, .. } = lowering;
    sources.sort_unstable();
    sources.dedup();
    if sources.is_empty() {
        return Err(err("the query reads no source table".into()));
    }
    Ok(Flow { location: location.clone(), content_ids, sink: sink_index, sources, stages })
}

fn check_sink_columns(output: SchemaRef, sink: &SinkTable, location: &Location) -> Result<(), SqlError> {
    let declared = sink.encoder.fields();
    for field in output.fields().iter().filter(|f| !is_hidden(f.name())) {
        match declared.iter().find(|d| d.name() == field.name()) {
            None => {
                return Err(SqlError::new(
                    location,
                    format!("column {} is not in sink {} (its columns: {})", field.name(), sink.name, names(declared)),
                ));
            }
            Some(d) if !can_cast_types(field.data_type(), d.data_type()) => {
                return Err(SqlError::new(
                    location,
                    format!("column {} is {}, sink {} wants {}", field.name(), field.data_type(), sink.name, d.data_type()),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = declared.iter().find(|d| !d.is_nullable() && output.field_with_name(d.name()).is_err()) {
        return Err(SqlError::new(location, format!("sink {} needs NOT NULL column {}", sink.name, missing.name())));
    }
    Ok(())
}

fn names(fields: &arrow::datatypes::Fields) -> String {
    fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
}

/// Cuts one query's logical plan at stateful nodes.
struct Lowering<'a> {
    pipeline: &'a Pipeline,
    stages: Vec<Stage>,
    sources: Vec<usize>,
    location: &'a Location,
    content_ids: bool,
}

/// `column <= N` (or `column > N`: `beyond`) seen above a window, by
/// unqualified column name.
#[derive(Debug, Clone)]
struct LimitHint {
    column: String,
    limit: u64,
    beyond: bool,
}

impl Lowering<'_> {
    fn err(&self, message: impl Into<String>) -> SqlError {
        SqlError::new(self.location, message)
    }

    fn lower<'b>(
        &'b mut self,
        plan: &'b LogicalPlan,
        hint: Option<LimitHint>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<LogicalPlan, SqlError>> + 'b>> {
        Box::pin(async move {
            match plan {
                LogicalPlan::TableScan(scan) => {
                    let provider = source_as_provider(&scan.source).map_err(|e| self.err(clean(e)))?;
                    if let Some(view) = provider.downcast_ref::<ViewTable>() {
                        let inner = self.lower(view.logical_plan(), hint).await?;
                        let aliased = LogicalPlanBuilder::from(inner).alias(scan.table_name.clone()).and_then(|b| b.build());
                        return aliased.map_err(|e| self.err(clean(e)));
                    }
                    let name = scan.table_name.table();
                    if let Some(shared) = self.pipeline.shared.iter().find(|v| v.name == name) {
                        self.sources.extend(&shared.sources);
                        return Ok(plan.clone());
                    }
                    if let Some(lookup) = self.pipeline.lookups.iter().find(|l| l.name == name) {
                        return Err(self.err(format!(
                            "lookup table {name} can only be joined: FROM stream [LEFT] JOIN {name} ON stream.x = {name}.{}",
                            lookup.key_field
                        )));
                    }
                    let index = self.pipeline.sources.iter().position(|s| s.name == name);
                    match index {
                        Some(i) => {
                            self.sources.push(i);
                            Ok(plan.clone())
                        }
                        None => Err(self.err(format!("{name} is not a source table"))),
                    }
                }
                LogicalPlan::Filter(filter) => {
                    let hint = limit_hint(&filter.predicate).or(hint);
                    self.rebuild(plan, hint).await
                }
                LogicalPlan::Projection(projection) => {
                    // Follow the hinted column through `expr AS alias`.
                    let hint = hint.and_then(|h| {
                        projection.expr.iter().find_map(|e| match e {
                            Expr::Alias(alias) if alias.name == h.column => match alias.expr.as_ref() {
                                Expr::Column(c) => Some(LimitHint { column: c.name.clone(), ..h.clone() }),
                                _ => None,
                            },
                            Expr::Column(c) if c.name == h.column => Some(h.clone()),
                            _ => None,
                        })
                    });
                    self.rebuild(plan, hint).await
                }
                LogicalPlan::SubqueryAlias(_) | LogicalPlan::Unnest(_) | LogicalPlan::Union(_) => self.rebuild(plan, hint).await,
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok(plan.clone()),
                LogicalPlan::Window(window) => self.window(window, hint).await,
                LogicalPlan::Aggregate(aggregate) if aggregate.group_expr.iter().any(|e| window_marker(e).is_some()) => {
                    self.window_aggregate(aggregate).await
                }
                LogicalPlan::Aggregate(_) => {
                    Err(self.err("GROUP BY over a stream needs a window: add tumble(INTERVAL '1' MINUTE) or hop(slide, width) to it"))
                }
                LogicalPlan::Join(join) => match self.lookup_of(&join.right) {
                    Some(lookup) => self.lookup_join(join, lookup).await,
                    None => self.interval_join(join).await,
                },
                LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                    Err(self.err("ORDER BY / LIMIT have no meaning over an unbounded stream; use ROW_NUMBER() over a window"))
                }
                LogicalPlan::Distinct(_) => {
                    Err(self.err("DISTINCT over a stream needs state: use ROW_NUMBER() OVER (PARTITION BY ..., tumble(...)) <= 1"))
                }
                other => Err(self.err(format!(
                    "{} is not supported in a streaming pipeline (supported: projection, WHERE, UNNEST, UNION ALL, views, ROW_NUMBER() window limits)",
                    other.display()
                ))),
            }
        })
    }

    async fn rebuild(&mut self, plan: &LogicalPlan, hint: Option<LimitHint>) -> Result<LogicalPlan, SqlError> {
        let mut inputs = Vec::new();
        for input in plan.inputs() {
            inputs.push(self.lower(input, hint.clone()).await?);
        }
        let exprs = match (plan, inputs.first()) {
            (LogicalPlan::Projection(_) | LogicalPlan::Filter(_), Some(input)) => {
                let keep_names = matches!(plan, LogicalPlan::Projection(_));
                plan.expressions().into_iter().map(|e| with_lineage_args(e, input.schema(), keep_names)).collect::<Result<_, _>>().map_err(|e| self.err(clean(e)))?
            }
            _ => plan.expressions(),
        };
        let rebuilt = plan.with_new_exprs(exprs, inputs).map_err(|e| self.err(clean(e)))?;
        match rebuilt {
            LogicalPlan::Projection(_) => self.with_lineage(rebuilt),
            other => Ok(other),
        }
    }

    /// Keeps the lineage columns of the projection's input in its output, so
    /// every output row can be traced to the record it came from.
    fn with_lineage(&self, projection: LogicalPlan) -> Result<LogicalPlan, SqlError> {
        let LogicalPlan::Projection(p) = &projection else { return Ok(projection) };
        let output = p.schema.as_ref();
        let mut exprs = p.expr.clone();
        for name in LINEAGE_COLUMNS {
            if output.fields().iter().any(|f| f.name() == name) {
                continue;
            }
            if let Some((qualifier, field)) = p.input.schema().iter().find(|(_, f)| f.name() == name) {
                exprs.push(Expr::Column(Column::new(qualifier.cloned(), field.name())));
            }
        }
        if exprs.len() == p.expr.len() {
            return Ok(projection);
        }
        LogicalPlanBuilder::from(p.input.as_ref().clone()).project(exprs).and_then(|b| b.build()).map_err(|e| self.err(clean(e)))
    }

    async fn window(&mut self, window: &datafusion::logical_expr::logical_plan::Window, hint: Option<LimitHint>) -> Result<LogicalPlan, SqlError> {
        let [expr] = window.window_expr.as_slice() else {
            return Err(self.err("one window function per SELECT: ROW_NUMBER() OVER (...)"));
        };
        let output_name = window.schema.field(window.schema.fields().len() - 1).name().clone();
        let function = match expr {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::WindowFunction(function) = function else {
            return Err(self.err("unsupported window expression"));
        };
        let is_row_number = matches!(&function.fun, WindowFunctionDefinition::WindowUDF(udf) if udf.name() == "row_number");
        if !is_row_number {
            return Err(self.err(format!("window function {}: only ROW_NUMBER() is supported", function.fun)));
        }
        let Some(hint) = hint.filter(|h| h.column == output_name || output_name.ends_with(&format!(".{}", h.column))) else {
            return Err(self.err("ROW_NUMBER() runs as a windowed limit: filter it with WHERE rn <= N (or rn = 1), or rn > N for the rows beyond it"));
        };
        let params = &function.params;
        let mut keys = Vec::new();
        let mut marker = None;
        let mut row_width = None;
        for e in &params.partition_by {
            match e {
                Expr::ScalarFunction(f) if f.func.name() == functions::SLIDING_WITHIN => {
                    let [Expr::Literal(max, _), seconds] = f.args.as_slice() else {
                        return Err(self.err("sliding_within(INTERVAL '<max>' ..., <seconds>) takes an interval literal and a per-row width"));
                    };
                    let max = functions::interval_nanos(max)
                        .ok_or_else(|| self.err("sliding_within(INTERVAL '...' ..., seconds): the maximum is an interval literal without months"))?;
                    if marker.replace((WindowKind::Sliding, max)).is_some() {
                        return Err(self.err("one window marker (tumble or sliding) per PARTITION BY"));
                    }
                    row_width = Some(seconds.clone());
                }
                Expr::ScalarFunction(f) if [functions::TUMBLE, functions::SLIDING].contains(&f.func.name()) => {
                    let width = match f.args.as_slice() {
                        [Expr::Literal(value, _)] => functions::interval_nanos(value),
                        _ => None,
                    }
                    .ok_or_else(|| self.err(format!("{}(INTERVAL '...' ...) takes one interval literal without months", f.func.name())))?;
                    let kind = if f.func.name() == functions::TUMBLE { WindowKind::Tumbling } else { WindowKind::Sliding };
                    if marker.replace((kind, width)).is_some() {
                        return Err(self.err("one window marker (tumble or sliding) per PARTITION BY"));
                    }
                }
                other => keys.push(other.clone()),
            }
        }
        let (kind, width) =
            marker.ok_or_else(|| self.err("PARTITION BY needs a window: add tumble(INTERVAL '5' MINUTE) or sliding(...)"))?;
        let [order] = params.order_by.as_slice() else {
            return Err(self.err("ROW_NUMBER() needs ORDER BY <event time column>"));
        };

        let input = self.lower(&window.input, None).await?;
        let state = self.pipeline.ctx.state();
        let input_schema = input.schema().clone();
        let physical = |e: &Expr| to_physical(&state, e, &input_schema).map_err(|err| self.err(clean(err)));
        let key_exprs = keys.iter().map(&physical).collect::<Result<Vec<_>, _>>()?;
        let key_types = keys
            .iter()
            .map(|k| k.get_type(&input_schema).map_err(|e| self.err(clean(e))))
            .collect::<Result<Vec<DataType>, _>>()?;
        let time = physical(&order.expr)?;
        let row_width_expr = row_width.as_ref().map(&physical).transpose()?;
        if !matches!(order.expr.get_type(&input_schema), Ok(DataType::Timestamp(..))) {
            return Err(self.err("ROW_NUMBER() ... ORDER BY must be a timestamp (the event time)"));
        }
        let lineage = LineageColumns {
            source: self.lineage_position(&input_schema, SOURCE_COLUMN)?,
            partition: self.lineage_position(&input_schema, PARTITION_COLUMN)?,
            watermark: self.lineage_position(&input_schema, WATERMARK_COLUMN)?,
        };
        let input_plan = state.create_physical_plan(&input).await.map_err(|e| self.err(clean(e)))?;
        self.stages.push(Stage::Segment { plan: input_plan });
        let input_stage = self.stages.len() - 1;

        // The operator's output: the (lowered) input's columns and the row
        // number, under plain names c0..cN.
        let (rn_qualifier, rn_field) = window.schema.qualified_field(window.schema.fields().len() - 1);
        let qualified: Vec<(Option<TableReference>, Arc<Field>)> = input_schema
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .chain(std::iter::once((rn_qualifier.cloned(), rn_field.clone())))
            .collect();
        let feed = feed_for(&qualified);
        let op = RowNumberLimit::new(key_exprs, key_types, time, lineage, kind, width, hint.limit, feed.schema().clone())
            .map_err(|e| self.err(clean(e)))?;
        let op = if hint.beyond { op.beyond_limit() } else { op };
        let op = match row_width_expr {
            Some(seconds) => op.with_row_width(seconds),
            None => op,
        };
        let passing: Vec<i32> = self.pipeline.sources.iter().enumerate().filter(|(_, s)| s.kafka.pass_late_rows).map(|(i, _)| i as i32).collect();
        let op = op.pass_late_rows_of(passing);
        let describe = format!(
            "RowNumberLimit: {} window {}{} s, keys [{}], {} {} per key",
            if kind == WindowKind::Tumbling { "tumbling" } else { "sliding" },
            row_width.as_ref().map(|w| format!("of {w} s per row, at most ")).unwrap_or_default(),
            width as f64 / 1e9,
            keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            if hint.beyond { "rows beyond the first" } else { "first" },
            hint.limit
        );
        self.stages.push(Stage::RowNumber { input: input_stage, op: Box::new(op), output: feed.clone(), describe });
        self.scan_feed(&feed, &qualified)
    }

    /// Scans an operator's feed, giving the columns back their qualified names.
    fn scan_feed(&self, feed: &Feed, qualified: &[(Option<TableReference>, Arc<Field>)]) -> Result<LogicalPlan, SqlError> {
        let feed_name = format!("__operator_{}", self.stages.len());
        let scan = LogicalPlanBuilder::scan(feed_name.as_str(), provider_as_source(feed.table()), None).map_err(|e| self.err(clean(e)))?;
        let exprs: Vec<Expr> = qualified
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                Expr::Column(Column::new(Some(TableReference::bare(feed_name.as_str())), format!("c{i}")))
                    .alias_qualified(qualifier.clone(), field.name())
            })
            .collect();
        scan.project(exprs).and_then(|b| b.build()).map_err(|e| self.err(clean(e)))
    }

    /// Position of a hidden lineage column in an operator's input.
    fn lineage_position(&self, schema: &DFSchema, name: &str) -> Result<usize, SqlError> {
        schema.fields().iter().position(|f| f.name() == name).ok_or_else(|| {
            self.err(format!("the window's input lost the hidden column {name}: read it from a source table or a view of one"))
        })
    }

    async fn window_aggregate(&mut self, aggregate: &datafusion::logical_expr::logical_plan::Aggregate) -> Result<LogicalPlan, SqlError> {
        let mut marker = None;
        let mut keys = Vec::new();
        for (i, e) in aggregate.group_expr.iter().enumerate() {
            match window_marker(e) {
                Some(found) => {
                    let spec = found.map_err(|m| self.err(m))?;
                    if marker.replace((i, spec)).is_some() {
                        return Err(self.err("one window (tumble or hop) per GROUP BY"));
                    }
                }
                None => keys.push(e.clone()),
            }
        }
        let (position, (width, slide)) = marker.expect("caller checked for a window marker");
        let input = self.lower(&aggregate.input, None).await?;
        let state = self.pipeline.ctx.state();
        let input_schema = input.schema().clone();
        let physical = |e: &Expr| to_physical(&state, e, &input_schema).map_err(|err| self.err(clean(err)));
        let key_exprs = keys.iter().map(&physical).collect::<Result<Vec<_>, _>>()?;
        let key_types =
            keys.iter().map(|k| k.get_type(&input_schema).map_err(|e| self.err(clean(e)))).collect::<Result<Vec<DataType>, _>>()?;
        let lineage = AggLineage {
            source: self.lineage_position(&input_schema, SOURCE_COLUMN)?,
            partition: self.lineage_position(&input_schema, PARTITION_COLUMN)?,
            watermark: self.lineage_position(&input_schema, WATERMARK_COLUMN)?,
            timestamp: self.lineage_position(&input_schema, TIMESTAMP_COLUMN)?,
        };
        let input_plan = state.create_physical_plan(&input).await.map_err(|e| self.err(clean(e)))?;
        let physical_schema = input_plan.schema();
        let mut aggregates = Vec::new();
        for e in &aggregate.aggr_expr {
            #[allow(deprecated)]
            let (function, filter, order) =
                create_aggregate_expr_and_maybe_filter(e, &input_schema, physical_schema.as_ref(), state.execution_props())
                    .map_err(|err| self.err(clean(err)))?;
            if !order.is_empty() {
                return Err(self.err(format!("{e}: ordered aggregates are not supported in windows")));
            }
            aggregates.push(AggregateSpec { function, filter });
        }
        self.stages.push(Stage::Segment { plan: input_plan });
        let input_stage = self.stages.len() - 1;

        let qualified: Vec<(Option<TableReference>, Arc<Field>)> =
            aggregate.schema.iter().map(|(q, f)| (q.cloned(), f.clone())).collect();
        let feed = feed_for(&qualified);
        let op = WindowAggregate::new(key_exprs, key_types, position, aggregates, lineage, width, slide, feed.schema().clone())
            .map_err(|e| self.err(clean(e)))?;
        let describe = format!(
            "WindowAggregate: {} {} s{}, keys [{}], [{}]",
            if width == slide { "tumbling" } else { "hopping" },
            width as f64 / 1e9,
            if width == slide { String::new() } else { format!(" every {} s", slide as f64 / 1e9) },
            keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            aggregate.aggr_expr.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
        );
        self.stages.push(Stage::WindowAggregate { input: input_stage, op: Box::new(op), output: feed.clone(), describe });
        self.scan_feed(&feed, &qualified)
    }
}

impl Lowering<'_> {
    /// The lookup table a join's right side scans, if it is one.
    fn lookup_of(&self, plan: &LogicalPlan) -> Option<usize> {
        match plan {
            LogicalPlan::SubqueryAlias(alias) => self.lookup_of(&alias.input),
            LogicalPlan::TableScan(scan) => self.pipeline.lookups.iter().position(|l| l.name == scan.table_name.table()),
            _ => None,
        }
    }

    async fn lookup_join(&mut self, join: &datafusion::logical_expr::logical_plan::Join, lookup: usize) -> Result<LogicalPlan, SqlError> {
        use datafusion::logical_expr::JoinType;
        use datafusion::logical_expr::utils::split_conjunction;
        let table = &self.pipeline.lookups[lookup];
        let left_outer = match join.join_type {
            JoinType::Inner => false,
            JoinType::Left => true,
            other => return Err(self.err(format!("{other} JOIN with lookup table {}: use INNER or LEFT", table.name))),
        };
        let mut equalities: Vec<(Expr, Expr)> = join.on.clone();
        for conjunct in join.filter.as_ref().map(split_conjunction).unwrap_or_default() {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => equalities.push((left.as_ref().clone(), right.as_ref().clone())),
                other => return Err(self.err(format!("join with lookup table {}: only `stream.x = {}.{}` is supported, not {other}", table.name, table.name, table.key_field))),
            }
        }
        let right_schema = join.right.schema().clone();
        let is_key = |e: &Expr| matches!(e, Expr::Column(c) if c.name == table.key_field && right_schema.has_column(c));
        let stream_key = match equalities.as_slice() {
            [(l, r)] if is_key(r) => l.clone(),
            [(l, r)] if is_key(l) => r.clone(),
            _ => {
                return Err(self.err(format!(
                    "join with lookup table {}: the condition must be one equality with {}.{}",
                    table.name, table.name, table.key_field
                )));
            }
        };
        let (name, key_field, state_handle) = (table.name.clone(), table.key_field.clone(), table.state.clone());
        let left_input = self.lower(&join.left, None).await?;
        let state = self.pipeline.ctx.state();
        let key = state.create_physical_expr(stream_key.clone(), left_input.schema()).map_err(|e| self.err(clean(e)))?;
        let left_plan = state.create_physical_plan(&left_input).await.map_err(|e| self.err(clean(e)))?;
        let left_width = left_plan.schema().fields().len();
        self.stages.push(Stage::Segment { plan: left_plan });
        let input = self.stages.len() - 1;
        let qualified = join_output(left_input.schema(), &right_schema, left_outer);
        let feed = feed_for(&qualified);
        let op = LookupJoin::new(key, state_handle, left_outer, left_width, feed.schema().clone());
        let describe =
            format!("LookupJoin: {} {name} ON {stream_key} = {name}.{key_field}", if left_outer { "LEFT" } else { "INNER" });
        self.stages.push(Stage::LookupJoin { input, op: Box::new(op), output: feed.clone(), describe });
        self.scan_feed(&feed, &qualified)
    }

    async fn interval_join(&mut self, join: &datafusion::logical_expr::logical_plan::Join) -> Result<LogicalPlan, SqlError> {
        use datafusion::logical_expr::JoinType;
        use datafusion::logical_expr::utils::split_conjunction;
        let left_outer = match join.join_type {
            JoinType::Inner => false,
            JoinType::Left => true,
            other => return Err(self.err(format!("{other} JOIN: interval joins are INNER or LEFT"))),
        };
        let (left_schema, right_schema) = (join.left.schema().clone(), join.right.schema().clone());
        let side = |e: &Expr| -> Option<bool> {
            let columns = e.column_refs();
            if columns.is_empty() {
                None
            } else if columns.iter().all(|c| left_schema.has_column(c)) {
                Some(true)
            } else if columns.iter().all(|c| right_schema.has_column(c)) {
                Some(false)
            } else {
                None
            }
        };
        let mut left_keys: Vec<Expr> = join.on.iter().map(|(l, _)| l.clone()).collect();
        let mut right_keys: Vec<Expr> = join.on.iter().map(|(_, r)| r.clone()).collect();
        let (mut lower, mut upper) = (i64::MIN, i64::MAX);
        let mut times: Option<(Expr, Expr)> = None;
        let conjuncts: Vec<&Expr> = join.filter.as_ref().map(split_conjunction).unwrap_or_default();
        let mut bound = |right_side: &Expr, op: Operator, left_side: &Expr| -> Result<(), String> {
            // right_side op left_side, each a time expression plus an optional interval.
            let (r_base, r_off) = linear(right_side).ok_or("time bounds must be column +/- INTERVAL")?;
            let (l_base, l_off) = linear(left_side).ok_or("time bounds must be column +/- INTERVAL")?;
            let c = l_off - r_off;
            match &times {
                Some((l, r)) if l != l_base || r != r_base => return Err("all time bounds must compare the same two time columns".into()),
                _ => times = Some((l_base.clone(), r_base.clone())),
            }
            match op {
                Operator::GtEq => lower = lower.max(c),
                Operator::Gt => lower = lower.max(c + 1),
                Operator::LtEq => upper = upper.min(c),
                Operator::Lt => upper = upper.min(c - 1),
                _ => return Err(format!("unsupported comparison {op} in a join condition")),
            }
            Ok(())
        };
        for conjunct in conjuncts {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (side(left), side(right)) {
                    (Some(true), Some(false)) => {
                        left_keys.push(left.as_ref().clone());
                        right_keys.push(right.as_ref().clone());
                    }
                    (Some(false), Some(true)) => {
                        left_keys.push(right.as_ref().clone());
                        right_keys.push(left.as_ref().clone());
                    }
                    _ => return Err(self.err(format!("join condition {conjunct}: an equality must compare one column of each side"))),
                },
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (r, o, l) = match (side(&strip_interval(left)), side(&strip_interval(right))) {
                        (Some(false), Some(true)) => (left.as_ref(), *op, right.as_ref()),
                        (Some(true), Some(false)) => (right.as_ref(), op.swap().unwrap_or(*op), left.as_ref()),
                        _ => return Err(self.err(format!("join condition {conjunct}: compare a time of each side"))),
                    };
                    bound(r, o, l).map_err(|m| self.err(format!("join condition {conjunct}: {m}")))?;
                }
                Expr::Between(between) if !between.negated => {
                    let checks = [(Operator::GtEq, between.low.as_ref()), (Operator::LtEq, between.high.as_ref())];
                    for (op, other) in checks {
                        match (side(&strip_interval(&between.expr)), side(&strip_interval(other))) {
                            (Some(false), Some(true)) => bound(&between.expr, op, other),
                            (Some(true), Some(false)) => bound(other, op.swap().unwrap_or(op), &between.expr),
                            _ => Err("BETWEEN must bound one side's time by the other's".into()),
                        }
                        .map_err(|m| self.err(format!("join condition {conjunct}: {m}")))?;
                    }
                }
                other => {
                    return Err(self.err(format!(
                        "join condition {other}: interval joins take equalities and time bounds (r.ts BETWEEN l.ts AND l.ts + INTERVAL ...)"
                    )));
                }
            }
        }
        if left_keys.is_empty() {
            return Err(self.err("an interval join needs an equality on a key (l.id = r.id)"));
        }
        let (Some((left_time, right_time)), true) = (times, lower > i64::MIN && upper < i64::MAX) else {
            return Err(self.err("an interval join needs both time bounds: r.ts BETWEEN l.ts AND l.ts + INTERVAL '1' DAY"));
        };
        if lower > upper {
            return Err(self.err("the join's time interval is empty"));
        }

        let before = self.sources.len();
        let left_input = self.lower(&join.left, None).await?;
        let middle = self.sources.len();
        let right_input = self.lower(&join.right, None).await?;
        let left_sources = self.sources[before..middle].to_vec();
        let right_sources = self.sources[middle..].to_vec();
        let state = self.pipeline.ctx.state();
        let mut sides = Vec::new();
        let mut key_types = Vec::new();
        for (input, keys, time) in [(&left_input, &left_keys, &left_time), (&right_input, &right_keys, &right_time)] {
            let schema = input.schema().clone();
            let physical = |e: &Expr| to_physical(&state, e, &schema).map_err(|err| self.err(clean(err)));
            let types = keys.iter().map(|k| k.get_type(&schema).map_err(|e| self.err(clean(e)))).collect::<Result<Vec<_>, _>>()?;
            if !key_types.is_empty() && key_types != types {
                return Err(self.err(format!("join keys differ in type: {key_types:?} vs {types:?}; CAST one side")));
            }
            key_types = types;
            if !matches!(time.get_type(&schema), Ok(DataType::Timestamp(..))) {
                return Err(self.err(format!("join time {time} must be a timestamp")));
            }
            sides.push(JoinSide {
                keys: keys.iter().map(&physical).collect::<Result<_, _>>()?,
                time: physical(time)?,
                lineage: SideLineage {
                    source: self.lineage_position(&schema, SOURCE_COLUMN)?,
                    partition: self.lineage_position(&schema, PARTITION_COLUMN)?,
                    watermark: self.lineage_position(&schema, WATERMARK_COLUMN)?,
                },
            });
        }
        let left_plan = state.create_physical_plan(&left_input).await.map_err(|e| self.err(clean(e)))?;
        let right_plan = state.create_physical_plan(&right_input).await.map_err(|e| self.err(clean(e)))?;
        let left_width = left_plan.schema().fields().len();
        self.stages.push(Stage::Segment { plan: left_plan });
        let left_stage = self.stages.len() - 1;
        self.stages.push(Stage::Segment { plan: right_plan });
        let right_stage = self.stages.len() - 1;

        let qualified = join_output(left_input.schema(), right_input.schema(), left_outer);
        let feed = feed_for(&qualified);
        let right_side = sides.pop().expect("two sides");
        let left_side = sides.pop().expect("two sides");
        let op = IntervalJoin::new(left_side, right_side, key_types, left_outer, (lower, upper), left_width, feed.schema().clone())
            .map_err(|e| self.err(clean(e)))?;
        let describe = format!(
            "IntervalJoin: {} on [{}], right time - left time in [{} s, {} s]",
            if left_outer { "LEFT" } else { "INNER" },
            left_keys.iter().zip(&right_keys).map(|(l, r)| format!("{l} = {r}")).collect::<Vec<_>>().join(", "),
            lower as f64 / 1e9,
            upper as f64 / 1e9
        );
        self.stages.push(Stage::IntervalJoin {
            left: left_stage,
            right: right_stage,
            left_sources,
            right_sources,
            op: Box::new(op),
            output: feed.clone(),
            describe,
        });
        self.content_ids = true;
        self.scan_feed(&feed, &qualified)
    }
}

/// `e`, or `base +/- INTERVAL` split into (base, offset in ns).
/// Appends the lineage columns of `input` to every UDF call in `expr`, so a
/// row a UDF fails on can be traced to its record (see `udf::UdfFailures`).
/// `keep_name`: a projection's output keeps the name it had without them.
fn with_lineage_args(expr: Expr, input: &DFSchema, keep_name: bool) -> datafusion::common::Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let lineage: Option<Vec<Expr>> = [SOURCE_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN]
        .iter()
        .map(|name| input.iter().find(|(_, f)| f.name() == name).map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name()))))
        .collect();
    let Some(lineage) = lineage else { return Ok(expr) };
    let [source, offset, partition] = <[Expr; 3]>::try_from(lineage).expect("three columns");
    let name = expr.schema_name().to_string();
    let rewritten = expr.clone().transform_up(|e| match e {
        Expr::ScalarFunction(mut call) => match (call.func.inner().as_ref() as &dyn std::any::Any).downcast_ref::<super::udf::HostUdf>() {
            Some(udf) if call.args.len() == udf.arity() => {
                call.args.extend([source.clone(), partition.clone(), offset.clone()]);
                Ok(Transformed::yes(Expr::ScalarFunction(call)))
            }
            _ => Ok(Transformed::no(Expr::ScalarFunction(call))),
        },
        other => Ok(Transformed::no(other)),
    })?;
    if !rewritten.transformed {
        return Ok(expr);
    }
    Ok(match rewritten.data {
        Expr::Alias(alias) => Expr::Alias(alias),
        other if keep_name => other.alias(name),
        other => other,
    })
}

fn linear(e: &Expr) -> Option<(&Expr, i64)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Plus, right }) => match right.as_ref() {
            Expr::Literal(v, _) => functions::interval_nanos(v).map(|n| (left.as_ref(), n)),
            _ => None,
        },
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Minus, right }) => match right.as_ref() {
            Expr::Literal(v, _) => functions::interval_nanos(v).map(|n| (left.as_ref(), -n)),
            _ => None,
        },
        Expr::Literal(..) => None,
        other => Some((other, 0)),
    }
}

/// The time part of `time +/- INTERVAL` (for telling which side it belongs to).
fn strip_interval(e: &Expr) -> Expr {
    linear(e).map(|(base, _)| base.clone()).unwrap_or_else(|| e.clone())
}

/// A join's output columns: the left input's, then the right's (nullable for a LEFT join).
fn join_output(left: &DFSchema, right: &DFSchema, left_outer: bool) -> Vec<(Option<TableReference>, Arc<Field>)> {
    let right_fields = right.iter().map(|(q, f)| {
        let field = if left_outer { Arc::new(f.as_ref().clone().with_nullable(true)) } else { f.clone() };
        (q.cloned(), field)
    });
    left.iter().map(|(q, f)| (q.cloned(), f.clone())).chain(right_fields).collect()
}

/// An operator's output feed, its columns named c0..cN.
fn feed_for(qualified: &[(Option<TableReference>, Arc<Field>)]) -> Feed {
    let fields: Vec<Field> =
        qualified.iter().enumerate().map(|(i, (_, f))| Field::new(format!("c{i}"), f.data_type().clone(), f.is_nullable())).collect();
    Feed::new(Arc::new(Schema::new(fields)))
}

/// `tumble(width)` -> (width, width); `hop(slide, width)` -> (width, slide).
fn window_marker(e: &Expr) -> Option<Result<(i64, i64), String>> {
    let Expr::ScalarFunction(f) = e else { return None };
    let literal = |e: &Expr| match e {
        Expr::Literal(value, _) => functions::interval_nanos(value),
        _ => None,
    };
    match (f.func.name(), f.args.as_slice()) {
        (functions::TUMBLE, [width]) => {
            Some(literal(width).map(|w| (w, w)).ok_or_else(|| "tumble(INTERVAL '...') takes an interval literal without months".into()))
        }
        (functions::HOP, [slide, width]) => Some(
            literal(slide)
                .zip(literal(width))
                .map(|(s, w)| (w, s))
                .ok_or_else(|| "hop(INTERVAL slide, INTERVAL width) takes interval literals without months".into()),
        ),
        _ => None,
    }
}

/// `col <= N`, `col < N`, `col = 1` (or mirrored) in a conjunction.
fn limit_hint(predicate: &Expr) -> Option<LimitHint> {
    fn strip(e: &Expr) -> &Expr {
        match e {
            Expr::Cast(c) => strip(&c.expr),
            Expr::TryCast(c) => strip(&c.expr),
            other => other,
        }
    }
    fn literal(e: &Expr) -> Option<i64> {
        match strip(e) {
            Expr::Literal(v, _) => match v {
                ScalarValue::Int64(Some(n)) => Some(*n),
                ScalarValue::Int32(Some(n)) => Some(i64::from(*n)),
                ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok(),
                ScalarValue::Int8(Some(n)) => Some(i64::from(*n)),
                ScalarValue::Int16(Some(n)) => Some(i64::from(*n)),
                ScalarValue::UInt32(Some(n)) => Some(i64::from(*n)),
                _ => None,
            },
            _ => None,
        }
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else { return None };
    if *op == Operator::And {
        return limit_hint(left).or_else(|| limit_hint(right));
    }
    let (column, op, n) = match (strip(left), strip(right)) {
        (Expr::Column(c), r) => (c, *op, literal(r)?),
        (l, Expr::Column(c)) => (c, op.swap()?, literal(l)?),
        _ => return None,
    };
    let (limit, beyond) = match op {
        Operator::LtEq => (n, false),
        Operator::Lt => (n - 1, false),
        Operator::Eq if n == 1 => (1, false),
        Operator::Gt => (n, true),
        Operator::GtEq => (n - 1, true),
        _ => return None,
    };
    (limit >= 1).then(|| LimitHint { column: column.name.clone(), limit: limit as u64, beyond })
}

/// DataFusion errors without their internal prefixes and backtraces.
fn clean(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.strip_prefix("Error during planning: ").unwrap_or(&text).to_string()
}

/// A logical expression of an operator's input as a physical one, simplified
/// first: some functions (coalesce) exist only as their rewrites.
fn to_physical(
    state: &datafusion::execution::SessionState,
    expr: &Expr,
    schema: &datafusion::common::DFSchemaRef,
) -> datafusion::common::Result<Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
    let simplified = ExprSimplifier::new(SimplifyContext::builder().with_schema(schema.clone()).build()).simplify(expr.clone())?;
    state.create_physical_expr(simplified, schema)
}
