//! Functions the engine adds to DataFusion's: window markers used in
//! `PARTITION BY` (`tumble`, `sliding`) and notiflow helpers.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;

pub const TUMBLE: &str = "tumble";
pub const SLIDING: &str = "sliding";
/// `sliding_within(INTERVAL max, seconds)`: a sliding window as wide as each
/// row says (e.g. the template's dedupe window), at most `max`.
pub const SLIDING_WITHIN: &str = "sliding_within";
pub const HOP: &str = "hop";

pub fn register(ctx: &SessionContext) {
    for name in [TUMBLE, SLIDING] {
        let marker = create_udf(
            name,
            vec![DataType::Interval(IntervalUnit::MonthDayNano)],
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            Volatility::Immutable,
            Arc::new(move |_| {
                Err(DataFusionError::Plan(format!(
                    "{name}(interval) marks a window: use it in ROW_NUMBER() OVER (PARTITION BY ..., {name}(...))"
                )))
            }),
        );
        ctx.register_udf(marker);
    }
    ctx.register_udf(create_udf(
        SLIDING_WITHIN,
        vec![DataType::Interval(IntervalUnit::MonthDayNano), DataType::Int64],
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        Volatility::Immutable,
        Arc::new(|_| Err(DataFusionError::Plan("sliding_within(max, seconds) marks a window: use it in ROW_NUMBER() OVER (PARTITION BY ...)".into()))),
    ));
    let hop = create_udf(
        HOP,
        vec![DataType::Interval(IntervalUnit::MonthDayNano), DataType::Interval(IntervalUnit::MonthDayNano)],
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        Volatility::Immutable,
        Arc::new(|_| Err(DataFusionError::Plan("hop(slide, width) marks a window: use it in GROUP BY".into()))),
    );
    ctx.register_udf(hop);
    // json_get(json_text, 'field'): a top-level field of a JSON column, as text
    // (strings unquoted, other values as JSON), null when absent.
    ctx.register_udf(create_udf(
        "json_get",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(json_get),
    ));
    // Volatile: evaluated per batch, never folded into the plan at start.
    ctx.register_udf(create_udf(
        "processing_time",
        vec![],
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Volatility::Volatile,
        Arc::new(|_| {
            let now = chrono::Utc::now().timestamp_millis();
            Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(Some(now), Some("UTC".into()))))
        }),
    ));
    ctx.register_udf(create_udf(
        "message_id",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(message_id),
    ));
}

/// The text arguments of a function call as arrays, and the row count when
/// any argument is an array (`None`: all scalars).
fn text_args(name: &str, args: &[ColumnarValue]) -> datafusion::common::Result<(Option<usize>, Vec<StringArray>)> {
    let rows = args.iter().find_map(|a| match a {
        ColumnarValue::Array(a) => Some(a.len()),
        ColumnarValue::Scalar(_) => None,
    });
    let arrays = args
        .iter()
        .map(|a| {
            let array = a.to_array(rows.unwrap_or(1))?;
            array.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| DataFusionError::Plan(format!("{name} takes text")))
        })
        .collect::<datafusion::common::Result<_>>()?;
    Ok((rows, arrays))
}

/// A result array, as a scalar when every argument was one.
fn text_result(rows: Option<usize>, array: ArrayRef) -> datafusion::common::Result<ColumnarValue> {
    Ok(match rows {
        Some(_) => ColumnarValue::Array(array),
        None => ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?),
    })
}

/// `message_id(tenant, request_id)`: the deterministic id of `contract::message_id`.
fn message_id(args: &[ColumnarValue]) -> datafusion::common::Result<ColumnarValue> {
    let (rows, arrays) = text_args("message_id", args)?;
    let (tenants, requests) = (&arrays[0], &arrays[1]);
    let mut out = StringBuilder::with_capacity(tenants.len(), tenants.len() * 34);
    for i in 0..tenants.len() {
        if tenants.is_null(i) || requests.is_null(i) {
            out.append_null();
        } else {
            out.append_value(crate::contract::message_id(tenants.value(i), requests.value(i)));
        }
    }
    text_result(rows, Arc::new(out.finish()))
}

fn json_get(args: &[ColumnarValue]) -> datafusion::common::Result<ColumnarValue> {
    let (rows, arrays) = text_args("json_get", args)?;
    let (documents, fields) = (&arrays[0], &arrays[1]);
    let mut out = StringBuilder::with_capacity(documents.len(), documents.len() * 16);
    for i in 0..documents.len() {
        if documents.is_null(i) || fields.is_null(i) {
            out.append_null();
            continue;
        }
        let value = serde_json::from_str::<std::collections::HashMap<&str, &serde_json::value::RawValue>>(documents.value(i))
            .ok()
            .and_then(|map| map.get(fields.value(i)).map(|v| v.get().to_string()));
        match value.as_deref() {
            None | Some("null") => out.append_null(),
            Some(raw) => match serde_json::from_str::<String>(raw) {
                Ok(string) => out.append_value(string),
                Err(_) => out.append_value(raw),
            },
        }
    }
    text_result(rows, Arc::new(out.finish()))
}

/// Nanoseconds of an interval literal with no month part.
pub fn interval_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000_000 + v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => Some(i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000),
        _ => None,
    }
}
