//! Aliyun SMS (Dysmsapi 2017-05-25 `SendSms`), RPC style: every parameter
//! (common ones included) in a form body, signed with HMAC-SHA1 over the
//! sorted, RFC 3986-encoded parameters (signature version 1.0). The answer
//! is JSON with a `Code`: `OK` and a `BizId` (the receipt key) is acceptance,
//! anything else is classified by code, whatever the HTTP status.
//!
//! Chinese SMS carry only approved templates: the provider maps each notiflow
//! template to an Aliyun `TemplateCode` whose one variable (`param_name`)
//! receives the rendered body.
//!
//! Delivery reports (SmsReport) arrive by Aliyun's HTTP batch push: a JSON
//! array POSTed to the URL set in the console. Aliyun does not sign it, so the
//! URL carries a secret (`report_token`) that the receiver compares in
//! constant time; a push without it is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use notiflow_delivery::{Accepted, Channel, Delivery, FailureReason, Receipt, Secret, SecretRef, SendError, SendFuture, http};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliyunConfig {
    /// API endpoint (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    pub access_key_id: String,
    /// Where the AccessKey secret is.
    pub access_key_secret: SecretRef,
    /// The approved signature (签名) shown before the text.
    pub sign_name: String,
    /// notiflow template -> Aliyun TemplateCode.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// TemplateCode for templates not in `templates`; none: such sends fail as content_rejected.
    #[serde(default)]
    pub default_template: Option<String>,
    /// The template variable that gets the rendered body.
    #[serde(default = "default_param")]
    pub param_name: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The secret last segment of the report push URL set in Aliyun's console
    /// (`https://<host>/v1/receipts/aliyun/<provider>/<token>`); unset: pushes refused.
    #[serde(default)]
    pub report_token: Option<SecretRef>,
}

fn default_endpoint() -> String {
    "https://dysmsapi.aliyuncs.com".into()
}

fn default_param() -> String {
    "content".into()
}

fn default_region() -> String {
    "cn-hangzhou".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

pub struct AliyunChannel {
    name: String,
    config: AliyunConfig,
    secret: Secret,
    client: reqwest::Client,
}

/// RFC 3986 percent-encoding as Aliyun specifies it: only `A-Z a-z 0-9 - _ . ~` stay.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `Signature` for `params` (without Signature itself) sent with `method`.
pub fn signature(method: &str, params: &BTreeMap<String, String>, secret: &str) -> String {
    let canonical: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect();
    let to_sign = format!("{method}&{}&{}", percent_encode("/"), percent_encode(&canonical.join("&")));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl AliyunChannel {
    pub fn new(name: &str, config: AliyunConfig) -> Result<Self, String> {
        let secret = config.access_key_secret.resolve().map_err(|e| format!("aliyun provider {name}: access_key_secret: {e}"))?;
        let client = http::client(Duration::from_millis(config.timeout_ms), "notiflow-sms")?;
        Ok(AliyunChannel { name: name.to_string(), config, secret, client })
    }

    fn params(&self, delivery: &Delivery, attempt: u32) -> Result<BTreeMap<String, String>, SendError> {
        let address = delivery.address.as_deref().filter(|a| !a.is_empty()).ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "no_number", "no phone number"))?;
        let template = delivery.template.as_deref().unwrap_or_default();
        let code = self.config.templates.get(template).or(self.config.default_template.as_ref()).ok_or_else(|| {
            SendError::permanent(FailureReason::ContentRejected, "no_template_code", format!("no Aliyun TemplateCode for template `{template}`"))
        })?;
        let param = serde_json::json!({ self.config.param_name.as_str(): delivery.body.as_deref().unwrap_or_default() }).to_string();
        let now = chrono::Utc::now();
        let id = delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id);
        let pairs = [
            ("AccessKeyId", self.config.access_key_id.clone()),
            ("Action", "SendSms".into()),
            ("Format", "JSON".into()),
            // Our id comes back on receipts.
            ("OutId", id.to_string()),
            ("PhoneNumbers", crate::national_or_international(address, "+86")),
            ("RegionId", self.config.region.clone()),
            ("SignName", delivery.sender.clone().unwrap_or_else(|| self.config.sign_name.clone())),
            ("SignatureMethod", "HMAC-SHA1".into()),
            ("SignatureNonce", format!("{id}-{attempt}-{}", now.timestamp_nanos_opt().unwrap_or_default())),
            ("SignatureVersion", "1.0".into()),
            ("TemplateCode", code.clone()),
            ("TemplateParam", param),
            ("Timestamp", now.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ("Version", "2017-05-25".into()),
        ];
        Ok(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    async fn post(&self, delivery: &Delivery, attempt: u32) -> Result<Accepted, SendError> {
        let mut params = self.params(delivery, attempt)?;
        let signed = signature("POST", &params, self.secret.expose());
        params.insert("Signature".into(), signed);
        let response = self.client.post(format!("{}/", self.config.endpoint.trim_end_matches('/'))).form(&params).send().await.map_err(|e| http::transport_error(&e))?;
        let (status, retry_after, body) = http::read(response).await;
        classify(status, retry_after, &body)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    biz_id: Option<String>,
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let Ok(answer) = serde_json::from_str::<Answer>(body) else {
        return Err(http::unreadable(status, body));
    };
    let detail = format!("HTTP {status}: {}", answer.message.unwrap_or_default());
    let code = answer.code;
    let reason = match code.as_str() {
        "OK" => {
            return match answer.biz_id {
                Some(id) if !id.is_empty() => Ok(Accepted { provider_message_id: Some(id) }),
                _ => Err(http::unreadable(status, body)),
            };
        }
        "Throttling" | "Throttling.User" | "Throttling.Api" | "isv.THROTTLING" => {
            return Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code, detail, retry_after });
        }
        "isp.SYSTEM_ERROR" | "ServiceUnavailable" | "InternalError" | "isp.GATEWAY_ERROR" => {
            return Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after });
        }
        "isv.MOBILE_NUMBER_ILLEGAL" | "isv.MOBILE_COUNT_OVER_LIMIT" | "isv.PHONE_NUMBER_ILLEGAL" => FailureReason::InvalidRecipient,
        // The recipient's per-minute/hour/day allowance: retrying soon cannot help.
        "isv.BUSINESS_LIMIT_CONTROL" | "isv.DAY_LIMIT_CONTROL" => FailureReason::RateLimited,
        "isv.AMOUNT_NOT_ENOUGH" | "isv.ACCOUNT_ABNORMAL" | "isv.ACCOUNT_NOT_EXISTS" | "InvalidAccessKeyId.NotFound" | "InvalidAccessKeyId.Inactive"
        | "SignatureDoesNotMatch" | "IncompleteSignature" | "isp.RAM_PERMISSION_DENY" | "Forbidden.RAM" => FailureReason::Auth,
        _ if status.is_server_error() => {
            return Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after });
        }
        // Template, signature, content and parameter refusals.
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code, detail))
}

impl Channel for AliyunChannel {
    fn channel(&self) -> &str {
        "sms"
    }

    fn provider(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, delivery: &'a Delivery, attempt: u32) -> SendFuture<'a> {
        Box::pin(self.post(delivery, attempt))
    }
}

impl AliyunChannel {
    /// The report push token, when configured.
    pub fn report_token(&self) -> Result<Option<Secret>, String> {
        self.config.report_token.as_ref().map(|t| t.resolve().map_err(|e| format!("aliyun provider {}: report_token: {e}", self.name))).transpose()
    }

    /// Receipts from one SmsReport push (a JSON array; times are China Standard Time).
    /// `biz_id` joins the send, `out_id` is our delivery id.
    pub fn reports(&self, body: &[u8]) -> Result<Vec<Receipt>, String> {
        let reports: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| format!("not a JSON array of reports: {e}"))?;
        reports
            .iter()
            .map(|report| {
                let text = |field: &str| report[field].as_str().filter(|v| !v.is_empty()).map(str::to_string);
                let biz_id = text("biz_id").ok_or("a report without biz_id")?;
                let delivered = report["success"].as_bool().ok_or("a report without success")?;
                Ok(Receipt {
                    kind: if delivered { "delivered" } else { "failed" }.into(),
                    channel: "sms".into(),
                    provider: self.name.clone(),
                    provider_message_id: biz_id,
                    delivery_id: text("out_id"),
                    tenant: None,
                    message_id: None,
                    url: None,
                    recipient: text("phone_number"),
                    status: text("err_code").unwrap_or_default(),
                    error_code: if delivered { None } else { text("err_code") },
                    at: crate::china_time_utc(text("report_time").as_deref()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    /// The worked example of Aliyun's SMS signature documentation.
    #[test]
    fn signature_matches_the_documented_example() {
        let params: BTreeMap<String, String> = [
            ("AccessKeyId", "testId"),
            ("Action", "SendSms"),
            ("Format", "XML"),
            ("OutId", "123"),
            ("PhoneNumbers", "15300000001"),
            ("RegionId", "cn-hangzhou"),
            ("SignName", "阿里云短信测试专用"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", "SMS_71390007"),
            ("TemplateParam", r#"{"customer":"test"}"#),
            ("Timestamp", "2017-07-12T02:42:19Z"),
            ("Version", "2017-05-25"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(signature("GET", &params, "testSecret"), "zJDF+Lrzhj/ThnlvIToysFRq6t4=");
        assert_eq!(percent_encode("a b*~/"), "a%20b%2A~%2F");
    }

    fn kind(status: u16, body: &str) -> String {
        notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body))
    }

    #[test]
    fn a_200_is_read_by_its_code() {
        assert_eq!(kind(200, r#"{"Code":"OK","Message":"OK","BizId":"900619746936498440^0","RequestId":"r"}"#), "accepted 900619746936498440^0");
        assert_eq!(kind(200, r#"{"Code":"isv.MOBILE_NUMBER_ILLEGAL","Message":"bad"}"#), "fail invalid_recipient isv.MOBILE_NUMBER_ILLEGAL");
        assert_eq!(kind(200, r#"{"Code":"isv.BUSINESS_LIMIT_CONTROL"}"#), "fail rate_limited isv.BUSINESS_LIMIT_CONTROL");
        assert_eq!(kind(200, r#"{"Code":"isv.SMS_TEMPLATE_ILLEGAL"}"#), "fail content_rejected isv.SMS_TEMPLATE_ILLEGAL");
        assert_eq!(kind(400, r#"{"Code":"SignatureDoesNotMatch"}"#), "fail auth SignatureDoesNotMatch");
        assert_eq!(kind(200, r#"{"Code":"isp.SYSTEM_ERROR"}"#), "retry provider_error isp.SYSTEM_ERROR");
        assert_eq!(kind(503, r#"{"Code":"Whatever"}"#), "retry provider_error Whatever");
        assert_eq!(kind(200, r#"{"Code":"OK"}"#), "retry provider_error 200", "OK without a BizId");
    }

    #[test]
    fn the_tenants_signature_replaces_the_configured_one() {
        unsafe { std::env::set_var("NOTIFLOW_UNIT_ALIYUN_SENDER", "s") };
        let config: AliyunConfig = serde_json::from_value(serde_json::json!({"access_key_id": "k", "access_key_secret": {"env": "NOTIFLOW_UNIT_ALIYUN_SENDER"},
            "sign_name": "Notiflow", "default_template": "SMS_1"})).unwrap();
        let channel = AliyunChannel::new("sms-aliyun", config).unwrap();
        let mut delivery: Delivery = serde_json::from_value(serde_json::json!({"type": "send", "message_id": "m_1", "request_id": "r", "tenant": "acme",
            "channel": "sms", "address": "+8613800000000", "body": "code 1"})).unwrap();
        assert_eq!(channel.params(&delivery, 1).unwrap()["SignName"], "Notiflow");
        delivery.sender = Some("Acme".into());
        assert_eq!(channel.params(&delivery, 1).unwrap()["SignName"], "Acme");
    }

    #[test]
    fn pushed_reports_become_receipts_in_utc() {
        // SmsReport as Aliyun documents its HTTP batch push, one delivered and one failed.
        unsafe { std::env::set_var("NOTIFLOW_UNIT_ALIYUN_REPORTS", "s") };
        let config: AliyunConfig = serde_json::from_value(serde_json::json!({"access_key_id": "k", "access_key_secret": {"env": "NOTIFLOW_UNIT_ALIYUN_REPORTS"}, "sign_name": "n"})).unwrap();
        let channel = AliyunChannel::new("sms-aliyun", config).unwrap();
        let body = r#"[{"phone_number":"13811112222","send_time":"2017-01-01 11:12:13","report_time":"2017-02-02 22:23:24","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"12345","out_id":"d_1"},
                       {"phone_number":"13800000000","send_time":"2017-01-01 11:12:13","report_time":"2017-02-02 22:23:30","success":false,"err_code":"MK:0001","err_msg":"failed","sms_size":"1","biz_id":"12346","out_id":""}]"#;
        let receipts = channel.reports(body.as_bytes()).unwrap();
        let got: Vec<_> = receipts.iter().map(|r| (r.kind.as_str(), r.provider_message_id.as_str(), r.delivery_id.as_deref(), r.error_code.as_deref(), r.at.as_str())).collect();
        assert_eq!(got, [("delivered", "12345", Some("d_1"), None, "2017-02-02T14:23:24.000Z"), ("failed", "12346", None, Some("MK:0001"), "2017-02-02T14:23:30.000Z")]);
        assert!(channel.reports(b"{}").is_err());
        assert!(channel.reports(br#"[{"success":true}]"#).is_err());
    }
}
