//! Templates and recipient profiles: the records stage 20 looks up, checked
//! before they are published to their compacted topics (`notiflow template
//! put|list`, `notiflow profile put`; examples in `examples/`).
//!
//! A template record's key is `tenant/name` for its approved version, and
//! `tenant/name#draft` (or `#retired`) otherwise: the pipeline joins on
//! `tenant/name`, so only an approved version is ever rendered, and putting a
//! draft never disturbs the version that is sending.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Channels a template or profile may name (the request contract's list).
pub const CHANNELS: &[&str] =
    &["email", "sms", "wecom", "wecom_robot", "dingtalk", "dingtalk_robot", "feishu", "wechat", "push", "apns", "webpush", "inbox", "webhook", "slack", "teams", "telegram"];
const CATEGORIES: &[&str] = &["otp", "transactional", "marketing"];

/// What one channel shows. `body` is text; `html` is the HTML part (email).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// The longest per-template dedupe window: stage 30's `sliding_within` maximum.
pub const MAX_DEDUPE_WINDOW_S: u32 = 6 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub tenant: String,
    pub name: String,
    /// Increases with every change; `template list` shows it.
    pub version: u64,
    /// `approved` (sends), `draft` or `retired` (never send).
    pub status: String,
    /// Channels in preference order.
    pub channels: Vec<String>,
    /// Locale of `content`; a recipient's locale picks from `translations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Content per channel (minijinja templates over the request's params).
    pub content: BTreeMap<String, ChannelContent>,
    /// Per locale (`zh-CN`), per channel: replaces `content` fields it has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub translations: BTreeMap<String, BTreeMap<String, ChannelContent>>,
    /// The same rendered content to the same recipient and channel within
    /// this many seconds goes out once (default 300; at most 6 hours, the
    /// window stage 30 keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_window_s: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub tenant: String,
    pub user_id: String,
    /// Address per channel: email address, E.164 phone for sms, user or
    /// open id for the chat channels, device token for push.
    pub addresses: BTreeMap<String, String>,
    /// IANA time zone for quiet hours and daily caps (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// `category:channel` entries, `*` for any (`marketing:*`, `*:sms`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opt_outs: Vec<String>,
    /// Quiet hours `HH:MM`, local time; both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_end: Option<String>,
}

/// A checked record, ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogRecord {
    pub key: String,
    pub value: Vec<u8>,
}

impl CatalogRecord {
    /// `item` as JSON with its key in field `id` (the lookup tables' key field).
    fn new(key: String, item: &impl Serialize) -> Self {
        let mut value = serde_json::to_value(item).expect("catalog items serialize");
        value["id"] = key.clone().into();
        CatalogRecord { key, value: value.to_string().into_bytes() }
    }

    /// The record to produce to `topic`, keyed by its key (so compaction keeps the latest).
    pub fn into_out(self, topic: &std::sync::Arc<str>) -> notiflow_connector::OutRecord {
        notiflow_connector::OutRecord { topic: topic.clone(), key: Some(self.key.into_bytes()), payload: self.value, headers: vec![] }
    }
}

fn check_id(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(format!("{what} `{value}`: letters, digits, '.', '_', '-' (at most 128)")) }
}

fn check_tenant(tenant: &str, tenants: &[String]) -> Result<(), String> {
    if tenants.iter().any(|t| t == tenant) {
        Ok(())
    } else {
        Err(format!("tenant `{tenant}` is not registered (known: {})", tenants.join(", ")))
    }
}

fn check_channel(channel: &str) -> Result<(), String> {
    if CHANNELS.contains(&channel) { Ok(()) } else { Err(format!("unknown channel `{channel}` (known: {})", CHANNELS.join(", "))) }
}

/// Every template string must compile: a syntax error fails `put`, not a send.
fn check_syntax(place: &str, source: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    env.template_from_str(source).map(|_| ()).map_err(|e| format!("{place}: {e}"))
}

fn check_content(place: &str, content: &ChannelContent) -> Result<(), String> {
    for (field, text) in [("subject", &content.subject), ("body", &content.body), ("html", &content.html)] {
        if let Some(text) = text {
            check_syntax(&format!("{place}.{field}"), text)?;
        }
    }
    Ok(())
}

impl Template {
    pub fn key(&self) -> String {
        match self.status.as_str() {
            "approved" => format!("{}/{}", self.tenant, self.name),
            other => format!("{}/{}#{other}", self.tenant, self.name),
        }
    }

    pub fn check(&self, tenants: &[String]) -> Result<(), String> {
        check_tenant(&self.tenant, tenants)?;
        check_id("template name", &self.name)?;
        if !["approved", "draft", "retired"].contains(&self.status.as_str()) {
            return Err(format!("status `{}`: approved, draft or retired", self.status));
        }
        if self.channels.is_empty() {
            return Err("channels: at least one".into());
        }
        if let Some(seconds) = self.dedupe_window_s
            && !(1..=MAX_DEDUPE_WINDOW_S).contains(&seconds)
        {
            return Err(format!("dedupe_window_s {seconds}: 1 to {MAX_DEDUPE_WINDOW_S} (6 hours)"));
        }
        for channel in &self.channels {
            check_channel(channel)?;
            let content = self.content.get(channel).ok_or_else(|| format!("channel {channel} has no content"))?;
            if content.body.is_none() && content.html.is_none() {
                return Err(format!("content.{channel}: needs a body or an html part"));
            }
        }
        for (channel, content) in &self.content {
            if !self.channels.contains(channel) {
                return Err(format!("content.{channel}: not one of the template's channels"));
            }
            check_content(&format!("content.{channel}"), content)?;
        }
        for (locale, per_channel) in &self.translations {
            for (channel, content) in per_channel {
                if !self.channels.contains(channel) {
                    return Err(format!("translations.{locale}.{channel}: not one of the template's channels"));
                }
                check_content(&format!("translations.{locale}.{channel}"), content)?;
            }
        }
        Ok(())
    }

    pub fn record(&self) -> CatalogRecord {
        CatalogRecord::new(self.key(), self)
    }
}

fn check_time_of_day(field: &str, value: &str) -> Result<(), String> {
    chrono::NaiveTime::parse_from_str(value, "%H:%M").map(|_| ()).map_err(|_| format!("{field} `{value}`: a time of day HH:MM"))
}

impl Profile {
    pub fn key(&self) -> String {
        format!("{}/{}", self.tenant, self.user_id)
    }

    pub fn check(&self, tenants: &[String]) -> Result<(), String> {
        check_tenant(&self.tenant, tenants)?;
        if self.user_id.is_empty() || self.user_id.len() > 128 {
            return Err("user_id: 1 to 128 characters".into());
        }
        for (channel, address) in &self.addresses {
            check_channel(channel)?;
            match channel.as_str() {
                "email" if !email_address::EmailAddress::is_valid(address) => {
                    return Err(format!("addresses.email `{address}` is not an email address"));
                }
                "sms" if !(address.starts_with('+') && address.len() >= 8 && address[1..].chars().all(|c| c.is_ascii_digit())) => {
                    return Err(format!("addresses.sms `{address}`: an E.164 number (+8613800138000)"));
                }
                _ if address.trim().is_empty() => return Err(format!("addresses.{channel} is empty")),
                _ => {}
            }
        }
        if let Some(zone) = &self.timezone {
            zone.parse::<chrono_tz::Tz>().map_err(|_| format!("timezone `{zone}` is not an IANA zone"))?;
        }
        for entry in &self.opt_outs {
            let (category, channel) = entry.split_once(':').ok_or_else(|| format!("opt_outs `{entry}`: category:channel"))?;
            if category != "*" && !CATEGORIES.contains(&category) {
                return Err(format!("opt_outs `{entry}`: unknown category `{category}`"));
            }
            if channel != "*" {
                check_channel(channel).map_err(|e| format!("opt_outs `{entry}`: {e}"))?;
            }
        }
        match (&self.quiet_start, &self.quiet_end) {
            (Some(start), Some(end)) => {
                check_time_of_day("quiet_start", start)?;
                check_time_of_day("quiet_end", end)?;
            }
            (None, None) => {}
            _ => return Err("quiet_start and quiet_end go together".into()),
        }
        Ok(())
    }

    pub fn record(&self) -> CatalogRecord {
        CatalogRecord::new(self.key(), self)
    }
}

/// Reads templates or profiles from a file: one JSON object, a JSON array,
/// or JSON lines. Errors name the file and the line or item.
pub fn read_items<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<Vec<(String, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    parse_items(&path.display().to_string(), &text)
}

/// [`read_items`] over text already read; `name` stands for the file in errors.
pub fn parse_items<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> anyhow::Result<Vec<(String, T)>> {
    let trimmed = text.trim_start();
    let parse = |place: String, json: &str| -> anyhow::Result<(String, T)> {
        serde_json::from_str(json).map(|item| (place.clone(), item)).map_err(|e| anyhow::anyhow!("{place}: {e}"))
    };
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        return items.iter().enumerate().map(|(i, v)| parse(format!("{name}[{i}]"), &v.to_string())).collect();
    }
    if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        return Ok(vec![parse(name.to_string(), text)?]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| parse(format!("{name}:{}", n + 1), line))
        .collect()
}

/// The records of checked templates (all or nothing).
pub fn template_records(items: &[(String, Template)], tenants: &[String]) -> anyhow::Result<Vec<CatalogRecord>> {
    check_all(items, |t| t.check(tenants))?;
    Ok(items.iter().map(|(_, t)| t.record()).collect())
}

/// The records of checked profiles (all or nothing).
pub fn profile_records(items: &[(String, Profile)], tenants: &[String]) -> anyhow::Result<Vec<CatalogRecord>> {
    check_all(items, |p| p.check(tenants))?;
    Ok(items.iter().map(|(_, p)| p.record()).collect())
}

/// The latest record per key of a compacted topic's records (tombstones delete).
pub fn latest_per_key(records: &[notiflow_connector::Record]) -> BTreeMap<String, serde_json::Value> {
    let mut latest = BTreeMap::new();
    for record in records {
        let Some(key) = record.key.as_deref().map(|k| String::from_utf8_lossy(k).to_string()) else { continue };
        match record.payload.as_deref().and_then(|p| serde_json::from_slice(p).ok()) {
            Some(value) => latest.insert(key, value),
            None => latest.remove(&key),
        };
    }
    latest
}

/// Checks every item; all or nothing.
pub fn check_all<T>(items: &[(String, T)], check: impl Fn(&T) -> Result<(), String>) -> anyhow::Result<()> {
    let errors: Vec<String> = items.iter().filter_map(|(place, item)| check(item).err().map(|e| format!("{place}: {e}"))).collect();
    anyhow::ensure!(errors.is_empty(), "nothing published:\n  {}", errors.join("\n  "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<String> {
        vec!["acme".into()]
    }

    fn template() -> Template {
        serde_json::from_str(
            r#"{"tenant":"acme","name":"order_shipped","version":2,"status":"approved","channels":["sms","email"],
                "content":{"sms":{"body":"Order {{ order.id }} shipped"},"email":{"subject":"Shipped","html":"<p>{{ name }}</p>"}},
                "translations":{"zh-CN":{"sms":{"body":"订单 {{ order.id }} 已发货"}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn an_approved_template_takes_the_sending_key_and_a_draft_does_not() {
        let t = template();
        t.check(&tenants()).unwrap();
        let record = t.record();
        assert_eq!(record.key, "acme/order_shipped");
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(value["id"], "acme/order_shipped");
        assert_eq!(value["channels"], serde_json::json!(["sms", "email"]));
        let draft = Template { status: "draft".into(), ..t };
        assert_eq!(draft.record().key, "acme/order_shipped#draft");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let err = |t: Template| t.check(&tenants()).unwrap_err();
        assert!(err(Template { tenant: "initech".into(), ..template() }).contains("not registered"));
        assert!(err(Template { status: "live".into(), ..template() }).contains("status"));
        assert!(err(Template { dedupe_window_s: Some(0), ..template() }).contains("dedupe_window_s 0"));
        assert!(err(Template { dedupe_window_s: Some(MAX_DEDUPE_WINDOW_S + 1), ..template() }).contains("6 hours"));
        Template { dedupe_window_s: Some(3600), ..template() }.check(&tenants()).unwrap();
        assert!(err(Template { channels: vec!["fax".into()], ..template() }).contains("unknown channel `fax`"));
        assert!(err(Template { channels: vec!["sms".into(), "email".into(), "inbox".into()], ..template() }).contains("inbox has no content"));
        let mut broken = template();
        broken.content.get_mut("sms").unwrap().body = Some("Order {{ order.id }".into());
        assert!(err(broken).starts_with("content.sms.body"));
        let mut stray = template();
        stray.translations.get_mut("zh-CN").unwrap().insert("wecom".into(), ChannelContent { subject: None, body: Some("x".into()), html: None });
        assert!(err(stray).contains("translations.zh-CN.wecom"));
    }

    #[test]
    fn profiles_are_checked_field_by_field() {
        let profile: Profile = serde_json::from_str(
            r#"{"tenant":"acme","user_id":"u-1","addresses":{"email":"ann@example.com","sms":"+8613800138000"},
                "timezone":"Asia/Shanghai","opt_outs":["marketing:*","*:sms"],"quiet_start":"22:00","quiet_end":"07:30"}"#,
        )
        .unwrap();
        profile.check(&tenants()).unwrap();
        assert_eq!(profile.record().key, "acme/u-1");
        let err = |p: Profile| p.check(&tenants()).unwrap_err();
        assert!(err(Profile { timezone: Some("Mars/Base".into()), ..profile.clone() }).contains("IANA"));
        assert!(err(Profile { opt_outs: vec!["promo:*".into()], ..profile.clone() }).contains("unknown category"));
        assert!(err(Profile { quiet_end: None, ..profile.clone() }).contains("go together"));
        assert!(err(Profile { quiet_end: Some("25:00".into()), ..profile.clone() }).contains("HH:MM"));
        let mut bad_phone = profile.clone();
        bad_phone.addresses.insert("sms".into(), "138 0013 8000".into());
        assert!(err(bad_phone).contains("E.164"));
        let mut bad_email = profile;
        bad_email.addresses.insert("email".into(), "ann@".into());
        assert!(err(bad_email).contains("not an email address"));
    }

    #[test]
    fn files_hold_one_object_an_array_or_lines() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.json");
        std::fs::write(&one, serde_json::to_string_pretty(&template()).unwrap()).unwrap();
        assert_eq!(read_items::<Template>(&one).unwrap().len(), 1);
        let lines = dir.path().join("many.jsonl");
        let line = serde_json::to_string(&template()).unwrap();
        std::fs::write(&lines, format!("{line}\n\n{line}\n{{\"tenant\":1}}\n")).unwrap();
        let error = read_items::<Template>(&lines).unwrap_err().to_string();
        assert!(error.contains("many.jsonl:4"), "{error}");
    }
}
