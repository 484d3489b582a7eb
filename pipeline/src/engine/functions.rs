//! Functions the engine adds to DataFusion's: window markers used in
//! `PARTITION BY` (`tumble`, `sliding`) and notiflow helpers.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use serde_json::value::RawValue;

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
    // Rows of one template share its documents, read for a few keys (a channel, a
    // locale) in any order: each distinct (document, field) is parsed once per batch.
    // Keyed by a hash of the document; the row it came from is compared on a hit.
    let mut answers: HashMap<(u64, &str), (usize, Option<String>)> = HashMap::new();
    for i in 0..documents.len() {
        if documents.is_null(i) || fields.is_null(i) {
            out.append_null();
            continue;
        }
        let (document, field) = (documents.value(i), fields.value(i));
        let key = (xxhash_rust::xxh3::xxh3_64(document.as_bytes()), field);
        match answers.get(&key) {
            Some((row, answer)) if documents.value(*row) == document => out.append_option(answer.as_deref()),
            seen => {
                let answer = match top_level_field(document, field).map(RawValue::get) {
                    None | Some("null") => None,
                    Some(raw) => Some(serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string())),
                };
                out.append_option(answer.as_deref());
                // A hash collision keeps the first document's answer; this one is just not cached.
                if seen.is_none() {
                    answers.insert(key, (i, answer));
                }
            }
        }
    }
    text_result(rows, Arc::new(out.finish()))
}

/// The raw JSON of `field` at the top level of the object `document`.
fn top_level_field<'a>(document: &'a str, field: &str) -> Option<&'a RawValue> {
    let mut found = [None];
    // Not a JSON object: `found` stays empty.
    super::json_fields::top_level(document.as_bytes(), &[field], &mut found);
    found[0]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn get(documents: Vec<Option<&str>>, field: &str) -> Vec<Option<String>> {
        let args = [ColumnarValue::Array(Arc::new(StringArray::from(documents))), ColumnarValue::Scalar(ScalarValue::Utf8(Some(field.into())))];
        let ColumnarValue::Array(out) = json_get(&args).unwrap() else { panic!("an array") };
        let out = out.as_any().downcast_ref::<StringArray>().unwrap();
        (0..out.len()).map(|i| (!out.is_null(i)).then(|| out.value(i).to_string())).collect()
    }

    #[test]
    fn json_get_reads_one_top_level_field() {
        let doc = r#"{"a": "x\"y", "b": {"c": [1, 2]}, "n": null, "k\u0065y": 5, "d": 1, "d": 2}"#;
        assert_eq!(get(vec![Some(doc)], "a"), vec![Some("x\"y".to_string())]);
        assert_eq!(get(vec![Some(doc)], "b"), vec![Some(r#"{"c": [1, 2]}"#.to_string())]);
        assert_eq!(get(vec![Some(doc)], "c"), vec![None], "not a top-level field");
        assert_eq!(get(vec![Some(doc)], "n"), vec![None]);
        assert_eq!(get(vec![Some(doc)], "key"), vec![Some("5".to_string())], "escaped key");
        assert_eq!(get(vec![Some(doc)], "d"), vec![Some("2".to_string())], "the last of a repeated key");
        for bad in ["[1]", "\"s\"", "{\"a\": 1", "{\"a\": 1} x", ""] {
            assert_eq!(get(vec![Some(bad)], "a"), vec![None], "{bad}");
        }
    }

    #[test]
    fn json_get_answers_documents_and_fields_in_any_order_like_the_first_time() {
        let (one, two) = (r#"{"sms": "s1", "email": "e1"}"#, r#"{"sms": "s2"}"#);
        let documents = StringArray::from(vec![Some(one), Some(two), Some(one), Some(one), Some(two), Some(one), None]);
        let fields = StringArray::from(vec![Some("sms"), Some("sms"), Some("email"), Some("sms"), Some("email"), Some("email"), Some("sms")]);
        let ColumnarValue::Array(out) = json_get(&[ColumnarValue::Array(Arc::new(documents)), ColumnarValue::Array(Arc::new(fields))]).unwrap() else {
            panic!("an array")
        };
        let out = out.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<Option<&str>> = (0..out.len()).map(|i| (!out.is_null(i)).then(|| out.value(i))).collect();
        assert_eq!(got, vec![Some("s1"), Some("s2"), Some("e1"), Some("s1"), None, Some("e1"), None]);
    }

    #[test]
    fn json_get_repeats_are_answered_like_the_first() {
        let (one, two) = (r#"{"a": "1"}"#, r#"{"a": "2"}"#);
        let got = get(vec![Some(one), Some(one), None, Some(one), Some(two), Some(two), Some(one)], "a");
        let expected = ["1", "1", "", "1", "2", "2", "1"].map(|v| (!v.is_empty()).then(|| v.to_string()));
        assert_eq!(got, expected);
    }
}
