//! Typed `WITH (...)` options of `CREATE TABLE`, with Arroyo's option names
//! where Arroyo has the option. Unknown options and bad values fail with a
//! message naming the option and what is allowed.

use std::collections::BTreeMap;

/// What a table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRole {
    Source,
    Sink,
    /// A table materialized from a compacted topic, joined by key
    /// (templates, profiles, tenants).
    Lookup,
}

/// What to do with a source record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadData {
    /// Stop the pipeline (Arroyo's default).
    Fail,
    /// Count and skip.
    Drop,
    /// Write to the dead-letter topic with a reason (notiflow's default).
    Dlq,
}

/// Where a source starts when its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
}

impl StartOffset {
    pub fn as_str(self) -> &'static str {
        match self {
            StartOffset::Earliest => "earliest",
            StartOffset::Latest => "latest",
        }
    }
}

/// `connector = 'kafka'`: a topic read or written as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTable {
    pub role: TableRole,
    pub topic: String,
    /// Overrides the cluster of `notiflow.toml` for this table.
    pub bootstrap_servers: Option<String>,
    /// `source.offset`: `earliest` (default) or `latest`.
    pub start_offset: StartOffset,
    /// `source.group_id`: defaults to `notiflow-<pipeline dir name>`.
    pub group_id: Option<String>,
    /// `sink.key_field`: the column whose value becomes the record key.
    pub key_field: Option<String>,
    /// `bad_data`: `dlq` (default), `drop` or `fail`.
    pub bad_data: BadData,
    /// `dlq.topic`: dead-letter topic for `bad_data = 'dlq'` (default `notify.dlq`).
    pub dlq_topic: String,
    /// `json.contract`: check records against a named producer contract
    /// before decoding (`notify.requests`: the request JSON Schema, the record
    /// key rule and the tenant registry).
    pub contract: Option<String>,
    /// `event_time_field`: column holding event time; default: the Kafka timestamp.
    pub event_time_field: Option<String>,
    /// `lookup.key_field`: the column a lookup table is keyed by (its records'
    /// Kafka key must be the same value, so a tombstone deletes the row).
    pub lookup_key_field: Option<String>,
    /// `late_rows`: what a windowed row-number limit does with this source's
    /// rows that arrive behind the watermark: `drop` (default, counted) or
    /// `pass` (let through as rn = 1: no loss, at the price of an occasional
    /// late duplicate; for streams that must never lose a record).
    pub pass_late_rows: bool,
    /// `hold.until_field`: a timer source. Each record waits outside the
    /// pipeline until the wall clock reaches this JSON field (RFC 3339 or
    /// epoch ms; missing or null: at once), held in the partition's checkpoint
    /// so it survives restarts (see `engine/hold.rs`).
    pub hold_until_field: Option<String>,
    /// `hold.wake_field` + `hold.wake_lookup`: a held record is released at
    /// once when this field's value is (or becomes) a key of that lookup
    /// table, e.g. when its request is recalled. Both or neither; timer
    /// sources only.
    pub hold_wake: Option<HoldWake>,
}

/// Wakes held records early: see `KafkaTable::hold_wake`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldWake {
    pub field: String,
    pub lookup: String,
}

/// A connector table definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connector {
    Kafka(KafkaTable),
}

impl Connector {
    pub fn role(&self) -> TableRole {
        match self {
            Connector::Kafka(k) => k.role,
        }
    }
}

const KAFKA_OPTIONS: &[&str] = &[
    "connector",
    "type",
    "format",
    "topic",
    "bootstrap_servers",
    "source.offset",
    "source.group_id",
    "sink.key_field",
    "bad_data",
    "dlq.topic",
    "json.contract",
    "event_time_field",
    "lookup.key_field",
    "late_rows",
    "hold.until_field",
    "hold.wake_field",
    "hold.wake_lookup",
];

pub const CONTRACTS: &[&str] = &["notify.requests"];

/// Parses the options of one table.
pub fn connector_from_options(options: &BTreeMap<String, String>) -> Result<Connector, String> {
    let connector = options.get("connector").ok_or("missing option `connector` (supported: 'kafka')")?;
    match connector.as_str() {
        "kafka" => kafka(options).map(Connector::Kafka),
        other => Err(format!("unsupported connector '{other}' (supported: 'kafka')")),
    }
}

fn kafka(options: &BTreeMap<String, String>) -> Result<KafkaTable, String> {
    if let Some(unknown) = options.keys().find(|k| !KAFKA_OPTIONS.contains(&k.as_str())) {
        return Err(format!("unknown option '{unknown}' for connector 'kafka' (supported: {})", KAFKA_OPTIONS.join(", ")));
    }
    let get = |k: &str| options.get(k).cloned();
    let role = match get("type").as_deref() {
        Some("source") => TableRole::Source,
        Some("sink") => TableRole::Sink,
        Some("lookup") => TableRole::Lookup,
        Some(other) => return Err(format!("option type = '{other}': expected 'source', 'sink' or 'lookup'")),
        None => return Err("missing option `type` ('source', 'sink' or 'lookup')".into()),
    };
    match get("format").as_deref() {
        None | Some("json") => {}
        Some(other) => return Err(format!("option format = '{other}': only 'json' is supported")),
    }
    let topic = get("topic").ok_or("missing option `topic`")?;
    let start_offset = match get("source.offset").as_deref() {
        None | Some("earliest") => StartOffset::Earliest,
        Some("latest") => StartOffset::Latest,
        Some(other) => return Err(format!("option source.offset = '{other}': expected 'earliest' or 'latest'")),
    };
    let bad_data = match get("bad_data").as_deref() {
        None | Some("dlq") => BadData::Dlq,
        Some("drop") => BadData::Drop,
        Some("fail") => BadData::Fail,
        Some(other) => return Err(format!("option bad_data = '{other}': expected 'dlq', 'drop' or 'fail'")),
    };
    let pass_late_rows = match get("late_rows").as_deref() {
        None | Some("drop") => false,
        Some("pass") => true,
        Some(other) => return Err(format!("option late_rows = '{other}': expected 'drop' or 'pass'")),
    };
    let contract = get("json.contract");
    if let Some(c) = &contract
        && !CONTRACTS.contains(&c.as_str())
    {
        return Err(format!("option json.contract = '{c}': known contracts: {}", CONTRACTS.join(", ")));
    }
    let source_only = [
        "source.offset",
        "source.group_id",
        "bad_data",
        "dlq.topic",
        "json.contract",
        "event_time_field",
        "late_rows",
        "hold.until_field",
        "hold.wake_field",
        "hold.wake_lookup",
    ];
    let hold_wake = match (get("hold.wake_field"), get("hold.wake_lookup")) {
        (None, None) => None,
        (Some(field), Some(lookup)) if options.contains_key("hold.until_field") => Some(HoldWake { field, lookup }),
        (Some(_), Some(_)) => return Err("'hold.wake_field' and 'hold.wake_lookup' wake held records: they need 'hold.until_field'".into()),
        _ => return Err("'hold.wake_field' and 'hold.wake_lookup' go together".into()),
    };
    if role == TableRole::Sink
        && let Some(opt) = source_only.iter().find(|o| options.contains_key(**o))
    {
        return Err(format!("option '{opt}' applies to sources, and this table has type = 'sink'"));
    }
    if role != TableRole::Sink && options.contains_key("sink.key_field") {
        return Err("option 'sink.key_field' applies to sinks".into());
    }
    if (role == TableRole::Lookup) != options.contains_key("lookup.key_field") {
        return Err("a lookup table needs 'lookup.key_field', and only a lookup table takes it".into());
    }
    Ok(KafkaTable {
        role,
        topic,
        bootstrap_servers: get("bootstrap_servers"),
        start_offset,
        group_id: get("source.group_id"),
        key_field: get("sink.key_field"),
        bad_data,
        dlq_topic: get("dlq.topic").unwrap_or_else(|| "notify.dlq".into()),
        contract,
        event_time_field: get("event_time_field"),
        lookup_key_field: get("lookup.key_field"),
        pass_late_rows,
        hold_until_field: get("hold.until_field"),
        hold_wake,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kafka_source_with_defaults() {
        let c = connector_from_options(&opts(&[("connector", "kafka"), ("type", "source"), ("topic", "t")])).unwrap();
        let Connector::Kafka(k) = c;
        assert_eq!((k.role, k.start_offset, k.bad_data), (TableRole::Source, StartOffset::Earliest, BadData::Dlq));
        assert_eq!(k.dlq_topic, "notify.dlq");
    }

    #[test]
    fn errors_name_the_option() {
        let err = connector_from_options(&opts(&[("connector", "kafka"), ("type", "source"), ("topic", "t"), ("tpoic", "x")]))
            .unwrap_err();
        assert!(err.contains("unknown option 'tpoic'"), "{err}");
        let err = connector_from_options(&opts(&[("connector", "kafka"), ("type", "sink"), ("topic", "t"), ("bad_data", "drop")]))
            .unwrap_err();
        assert!(err.contains("'bad_data' applies to sources"), "{err}");
        let err = connector_from_options(&opts(&[("connector", "redis")])).unwrap_err();
        assert!(err.contains("unsupported connector 'redis'"), "{err}");
    }

    #[test]
    fn wake_options_go_together_on_a_timer_source() {
        let base = [("connector", "kafka"), ("type", "source"), ("topic", "t")];
        let with = |extra: &[(&'static str, &'static str)]| connector_from_options(&opts(&[&base[..], extra].concat()));
        let until = ("hold.until_field", "release_at");
        let (field, lookup) = (("hold.wake_field", "recall_key"), ("hold.wake_lookup", "recalls"));
        let Connector::Kafka(k) = with(&[until, field, lookup]).unwrap();
        assert_eq!(k.hold_wake, Some(HoldWake { field: "recall_key".into(), lookup: "recalls".into() }));
        assert!(with(&[until, field]).unwrap_err().contains("go together"));
        assert!(with(&[field, lookup]).unwrap_err().contains("need 'hold.until_field'"));
    }
}
