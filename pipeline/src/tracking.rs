//! Click tracking. `notiflow deliver` rewrites the links of outgoing
//! content on tracked channels to `<base_url>/c/<token>`; `notiflow receipts
//! serve` answers that path by writing a `clicked` receipt and redirecting
//! to the original link. The token carries the delivery (tenant, message,
//! delivery, channel) and the link, signed with HMAC-SHA256: the endpoint is
//! no open redirect, and a click names a real delivery without any lookup.
//!
//! ```toml
//! [tracking]
//! base_url = "https://t.example.com"       # where `notiflow receipts serve` is reachable
//! secret = { env = "NOTIFLOW_TRACKING_SECRET" }
//! channels = ["email"]                     # default; SMS links grow by ~150 characters
//! ```

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use notiflow_delivery::{Delivery, SecretRef};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// `[tracking]` in notiflow.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrackingConfig {
    /// Public base URL of the receipts server (`/c/<token>` is appended).
    pub base_url: String,
    /// Signs the tokens (at least 16 characters). Rotating it breaks links already sent.
    pub secret: SecretRef,
    /// Channels whose links are rewritten.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
}

fn default_channels() -> Vec<String> {
    vec!["email".into()]
}

/// What a tracked link stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "m")]
    pub message_id: String,
    #[serde(rename = "d")]
    pub delivery_id: String,
    #[serde(rename = "c")]
    pub channel: String,
    #[serde(rename = "u")]
    pub url: String,
}

pub struct ClickTracker {
    base: String,
    key: Vec<u8>,
    channels: BTreeSet<String>,
}

/// Tag length: 128 bits is plenty against forgery and keeps links short.
const TAG_BYTES: usize = 16;

impl ClickTracker {
    pub fn new(config: &TrackingConfig) -> anyhow::Result<Self> {
        let secret = config.secret.resolve().map_err(|e| anyhow::anyhow!("[tracking] secret: {e}"))?;
        anyhow::ensure!(secret.expose().len() >= 16, "[tracking] secret: at least 16 characters");
        let base = config.base_url.trim_end_matches('/').to_string();
        anyhow::ensure!(base.starts_with("https://") || base.starts_with("http://"), "[tracking] base_url must be an http(s) URL: {base}");
        Ok(ClickTracker { base, key: secret.expose().as_bytes().to_vec(), channels: config.channels.iter().cloned().collect() })
    }

    fn tag(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    pub fn token(&self, click: &Click) -> String {
        let payload = serde_json::to_vec(click).expect("clicks serialize");
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(self.tag(&payload)))
    }

    /// The click a token stands for, if its signature is ours.
    pub fn verify(&self, token: &str) -> Option<Click> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&payload);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(&tag).ok()?;
        serde_json::from_slice(&payload).ok()
    }

    pub fn tracked_url(&self, click: &Click) -> String {
        format!("{}/c/{}", self.base, self.token(click))
    }

    /// Rewrites the links of a delivery on a tracked channel: `href`s in its
    /// HTML, bare http(s) URLs in its text. Links to ourselves stay.
    pub fn rewrite(&self, delivery: &mut Delivery) {
        let Some(channel) = delivery.channel.clone().filter(|c| self.channels.contains(c)) else { return };
        let Some(delivery_id) = delivery.delivery_id.clone() else { return };
        let link = |url: &str| {
            if url.starts_with(&self.base) {
                return url.to_string();
            }
            let click = Click { tenant: delivery.tenant.clone(), message_id: delivery.message_id.clone(), delivery_id: delivery_id.clone(), channel: channel.clone(), url: url.to_string() };
            self.tracked_url(&click)
        };
        let body = delivery.body.as_deref().map(|text| rewrite_bare_urls(text, &link));
        let html = delivery.html.as_deref().map(|html| rewrite_hrefs(html, &link));
        delivery.body = body;
        delivery.html = html;
    }
}

/// Bare `http(s)://` URLs in text; trailing punctuation stays outside the link.
fn rewrite_bare_urls(text: &str, link: &impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url_start(rest) {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let end = candidate.find(|c: char| c.is_whitespace() || "\"'<>".contains(c)).unwrap_or(candidate.len());
        let url = candidate[..end].trim_end_matches(|c: char| ".,;:!?)]}".contains(c));
        out.push_str(&link(url));
        rest = &candidate[url.len()..];
    }
    out.push_str(rest);
    out
}

fn find_url_start(text: &str) -> Option<usize> {
    let at = |i: usize| text[i..].starts_with("https://") || text[i..].starts_with("http://");
    text.char_indices().map(|(i, _)| i).find(|&i| at(i) && text[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric()))
}

/// `href="..."` / `href='...'` values that are http(s) URLs.
fn rewrite_hrefs(html: &str, link: &impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = lower.find("href=") else { break };
        let value_start = at + "href=".len();
        let Some(quote) = rest[value_start..].chars().next().filter(|q| *q == '"' || *q == '\'') else {
            out.push_str(&rest[..value_start]);
            rest = &rest[value_start..];
            continue;
        };
        let Some(len) = rest[value_start + 1..].find(quote) else { break };
        let value = &rest[value_start + 1..value_start + 1 + len];
        out.push_str(&rest[..value_start + 1]);
        if value.starts_with("https://") || value.starts_with("http://") {
            // An href holds HTML-escaped text: the link is what a browser would follow.
            out.push_str(&link(&value.replace("&amp;", "&")).replace('&', "&amp;"));
        } else {
            out.push_str(value);
        }
        rest = &rest[value_start + 1 + len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> ClickTracker {
        ClickTracker { base: "https://t.example.com".into(), key: b"0123456789abcdef-secret".to_vec(), channels: BTreeSet::from(["email".to_string()]) }
    }

    fn delivery(body: &str, html: Option<&str>) -> Delivery {
        serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": "d1", "message_id": "m1", "request_id": "r1", "tenant": "acme",
            "channel": "email", "body": body, "html": html}))
        .unwrap()
    }

    fn clicks(text: &str, tracker: &ClickTracker) -> Vec<Click> {
        text.split("https://t.example.com/c/").skip(1).map(|rest| tracker.verify(rest.split(|c: char| "\"' <".contains(c)).next().unwrap().trim_end_matches(['.', ')'])).unwrap()).collect()
    }

    #[test]
    fn links_in_text_and_html_become_signed_tracking_links() {
        let tracker = tracker();
        let mut d = delivery(
            "Track it: https://shop.example.com/o/7?x=1&y=2. Or see (https://help.example.com).",
            Some(r#"<a href="https://shop.example.com/o/7?x=1&amp;y=2">order</a> <a href='mailto:a@b.c'>mail</a> <A HREF="https://t.example.com/keep">x</A>"#),
        );
        tracker.rewrite(&mut d);
        let body = d.body.unwrap();
        assert!(body.starts_with("Track it: https://t.example.com/c/") && body.ends_with(")."), "{body}");
        let urls: Vec<String> = clicks(&body, &tracker).into_iter().map(|c| c.url).collect();
        assert_eq!(urls, ["https://shop.example.com/o/7?x=1&y=2", "https://help.example.com"]);
        let html = d.html.unwrap();
        let html_clicks = clicks(&html, &tracker);
        assert_eq!(html_clicks.len(), 1);
        assert_eq!(html_clicks[0], Click { tenant: "acme".into(), message_id: "m1".into(), delivery_id: "d1".into(), channel: "email".into(), url: "https://shop.example.com/o/7?x=1&y=2".into() });
        assert!(html.contains("href='mailto:a@b.c'") && html.contains(r#"HREF="https://t.example.com/keep""#), "{html}");
    }

    #[test]
    fn untracked_channels_are_left_alone_and_forged_tokens_refused() {
        let tracker = tracker();
        let mut sms = delivery("see https://x.example.com", None);
        sms.channel = Some("sms".into());
        tracker.rewrite(&mut sms);
        assert_eq!(sms.body.as_deref(), Some("see https://x.example.com"));

        let click = Click { tenant: "acme".into(), message_id: "m".into(), delivery_id: "d".into(), channel: "email".into(), url: "https://a.example".into() };
        let token = tracker.token(&click);
        assert_eq!(tracker.verify(&token), Some(click.clone()));
        // Another target with the old tag, another key, a cut tag, garbage: refused.
        let (_, tag) = token.split_once('.').unwrap();
        let evil = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Click { url: "https://evil.example".into(), ..click.clone() }).unwrap());
        assert_eq!(tracker.verify(&format!("{evil}.{tag}")), None);
        let other = ClickTracker { key: b"another-secret-key-000".to_vec(), ..self::tracker() };
        assert_eq!(other.verify(&token), None);
        assert_eq!(tracker.verify(&token[..token.len() - 4]), None);
        assert_eq!(tracker.verify("not-a-token"), None);
    }
}
