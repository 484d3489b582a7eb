//! Tencent Cloud SMS (`SendSms`, API 2021-01-11): a JSON body signed with
//! TC3-HMAC-SHA256 (a canonical request over method, path, signed headers and
//! the body's SHA-256; a signing key derived from the SecretKey, the date and
//! the service). The answer lists one status per number: `Ok` with a
//! `SerialNo` (the receipt key) is acceptance; a request-level `Error` or a
//! number's `Code` is classified. `SessionContext` carries the delivery id.
//!
//! Delivery reports are pulled (`PullSmsSendStatus`, each report handed out
//! once): `notiflow receipts serve` polls when `pull_receipts_ms` is set.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use notiflow_delivery::{Accepted, Delivery, FailureReason, Receipt, Secret, SecretRef, SendError, http};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TencentConfig {
    /// API endpoint (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    pub secret_id: String,
    /// Where the SecretKey is.
    pub secret_key: SecretRef,
    /// The SMS application (`SmsSdkAppId`, 1400...).
    pub sdk_app_id: String,
    /// The approved signature (签名).
    pub sign_name: String,
    /// notiflow template -> Tencent TemplateId.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// TemplateId for templates not in `templates` (its one parameter gets the rendered body).
    #[serde(default)]
    pub default_template: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `notiflow receipts serve` pulls delivery reports this often (ms); unset: no pulling.
    #[serde(default)]
    pub pull_receipts_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://sms.tencentcloudapi.com".into()
}

fn default_region() -> String {
    "ap-guangzhou".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

pub struct TencentChannel {
    name: String,
    config: TencentConfig,
    secret: Secret,
    host: String,
    client: reqwest::Client,
}

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Authorization` header of a request for `action` (e.g. `SendSms`) with `body` to `host` at `timestamp`.
pub fn authorization(secret_id: &str, secret_key: &str, host: &str, action: &str, body: &str, timestamp: i64) -> String {
    let date = chrono::DateTime::from_timestamp(timestamp, 0).expect("valid timestamp").format("%Y-%m-%d").to_string();
    let signed_headers = "content-type;host;x-tc-action";
    let action = action.to_ascii_lowercase();
    let canonical = format!("POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\nx-tc-action:{action}\n\n{signed_headers}\n{}", hex(&Sha256::digest(body)));
    let scope = format!("{date}/sms/tc3_request");
    let to_sign = format!("TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let key = hmac(&hmac(&hmac(format!("TC3{secret_key}").as_bytes(), &date), "sms"), "tc3_request");
    format!("TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={}", hex(&hmac(&key, &to_sign)))
}

impl TencentChannel {
    pub fn new(name: &str, config: TencentConfig) -> Result<Self, String> {
        let secret = config.secret_key.resolve().map_err(|e| format!("tencent provider {name}: secret_key: {e}"))?;
        let url = reqwest::Url::parse(&config.endpoint).map_err(|e| format!("tencent provider {name}: endpoint: {e}"))?;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let client = http::client(Duration::from_millis(config.timeout_ms), "notiflow-sms")?;
        Ok(TencentChannel { name: name.into(), config, secret, host, client })
    }

    fn body(&self, delivery: &Delivery) -> Result<String, SendError> {
        let phone = delivery.address.as_deref().filter(|a| a.starts_with('+')).ok_or_else(|| {
            SendError::permanent(FailureReason::InvalidRecipient, "no_e164", format!("`{}` is not an E.164 number", delivery.address.as_deref().unwrap_or("")))
        })?;
        let template = delivery.template.as_deref().unwrap_or_default();
        let id = self.config.templates.get(template).or(self.config.default_template.as_ref()).ok_or_else(|| {
            SendError::permanent(FailureReason::ContentRejected, "no_template_id", format!("no Tencent TemplateId for template `{template}`"))
        })?;
        let body = serde_json::json!({
            "PhoneNumberSet": [phone],
            "SmsSdkAppId": self.config.sdk_app_id,
            "SignName": delivery.sender.as_deref().unwrap_or(&self.config.sign_name),
            "TemplateId": id,
            "TemplateParamSet": [delivery.body.as_deref().unwrap_or_default()],
            "SessionContext": delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id),
        });
        Ok(body.to_string())
    }

    /// One signed API call; the answer's status, Retry-After and body.
    async fn call(&self, action: &str, body: String) -> Result<(reqwest::StatusCode, Option<Duration>, String), SendError> {
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(format!("{}/", self.config.endpoint.trim_end_matches('/')))
            .header("content-type", CONTENT_TYPE)
            .header("host", &self.host)
            .header("x-tc-action", action)
            .header("x-tc-version", "2021-01-11")
            .header("x-tc-region", &self.config.region)
            .header("x-tc-timestamp", timestamp.to_string())
            .header("authorization", authorization(&self.config.secret_id, self.secret.expose(), &self.host, action, &body, timestamp))
            .body(body)
            .send()
            .await
            .map_err(|e| http::transport_error(&e))?;
        Ok(http::read(response).await)
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let (status, retry_after, text) = self.call("SendSms", self.body(delivery)?).await?;
        classify(status, retry_after, &text)
    }

    /// How often to pull delivery reports, when configured.
    pub fn pull_every(&self) -> Option<Duration> {
        self.config.pull_receipts_ms.map(Duration::from_millis)
    }

    /// Up to `limit` (1-100) delivery reports Tencent has not handed out yet.
    pub async fn pull_receipts(&self, limit: u32) -> Result<Vec<Receipt>, SendError> {
        let body = serde_json::json!({"SmsSdkAppId": self.config.sdk_app_id, "Limit": limit.clamp(1, 100)}).to_string();
        let (status, retry_after, text) = self.call("PullSmsSendStatus", body).await?;
        pulled_receipts(&self.name, status, retry_after, &text)
    }
}

/// Receipts from a `PullSmsSendStatus` answer. `UserReceiveTime` is China Standard Time (UTC+8).
pub fn pulled_receipts(provider: &str, status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Vec<Receipt>, SendError> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|_| http::unreadable(status, body))?;
    let response = &answer["Response"];
    if let Some(code) = response["Error"]["Code"].as_str() {
        return Err(failure(code, response["Error"]["Message"].as_str().unwrap_or("").to_string(), retry_after));
    }
    let set = response["PullSmsSendStatusSet"].as_array().ok_or_else(|| http::unreadable(status, body))?;
    let text = |report: &serde_json::Value, field: &str| report[field].as_str().filter(|v| !v.is_empty()).map(str::to_string);
    Ok(set
        .iter()
        .filter_map(|report| {
            let serial = text(report, "SerialNo")?;
            let delivered = report["ReportStatus"] == "SUCCESS";
            Some(Receipt {
                kind: if delivered { "delivered" } else { "failed" }.into(),
                channel: "sms".into(),
                provider: provider.to_string(),
                provider_message_id: serial,
                delivery_id: text(report, "SessionContext"),
                tenant: None,
                message_id: None,
                url: None,
                recipient: text(report, "PhoneNumber"),
                status: text(report, "ReportStatus").unwrap_or_default(),
                error_code: if delivered { None } else { text(report, "Description") },
                at: crate::china_time_utc(text(report, "UserReceiveTime").as_deref()),
            })
        })
        .collect())
}

/// A Tencent error or per-number code, by what to do.
fn failure(code: &str, detail: String, retry_after: Option<Duration>) -> SendError {
    let retry = |reason| SendError::Retryable { reason, provider_code: code.to_string(), detail: detail.clone(), retry_after };
    let reason = match code {
        "RequestLimitExceeded" | "LimitExceeded.AppGlobalLimit" => return retry(FailureReason::RateLimited),
        c if c.starts_with("InternalError") || c == "ResourceUnavailable" => return retry(FailureReason::ProviderError),
        c if c.starts_with("AuthFailure") || c.starts_with("UnauthorizedOperation") => FailureReason::Auth,
        "InvalidParameterValue.IncorrectPhoneNumber" | "FailedOperation.PhoneNumberInBlacklist" | "UnsupportedOperation.UnsupportedRegion" => {
            FailureReason::InvalidRecipient
        }
        // The number's daily/hourly allowance: retrying soon cannot help.
        c if c.starts_with("LimitExceeded.PhoneNumber") => FailureReason::RateLimited,
        _ => FailureReason::ContentRejected,
    };
    SendError::permanent(reason, code, detail)
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|_| http::unreadable(status, body))?;
    let response = &answer["Response"];
    if let Some(code) = response["Error"]["Code"].as_str() {
        return Err(failure(code, response["Error"]["Message"].as_str().unwrap_or("").to_string(), retry_after));
    }
    let Some(number) = response["SendStatusSet"].as_array().and_then(|set| set.first()) else {
        return Err(http::unreadable(status, body));
    };
    match (number["Code"].as_str(), number["SerialNo"].as_str()) {
        (Some("Ok"), Some(serial)) if !serial.is_empty() => Ok(Accepted { provider_message_id: Some(serial.to_string()) }),
        (Some(code), _) if code != "Ok" => Err(failure(code, number["Message"].as_str().unwrap_or("").to_string(), retry_after)),
        _ => Err(http::unreadable(status, body)),
    }
}

notiflow_delivery::impl_channel!(TencentChannel, "sms", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn kind(body: &str) -> String {
        notiflow_delivery::summary(&classify(StatusCode::OK, None, body))
    }

    #[test]
    fn answers_are_read_per_number_and_per_request() {
        let ok = r#"{"Response":{"SendStatusSet":[{"SerialNo":"5000:1045710669157053657849499619","PhoneNumber":"+8618511122233","Fee":1,"SessionContext":"d_1","Code":"Ok","Message":"send success","IsoCode":"CN"}],"RequestId":"a0aabda6"}}"#;
        assert_eq!(kind(ok), "accepted 5000:1045710669157053657849499619");
        let bad_number = r#"{"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"+86123","Code":"InvalidParameterValue.IncorrectPhoneNumber","Message":"incorrect"}],"RequestId":"x"}}"#;
        assert_eq!(kind(bad_number), "fail invalid_recipient InvalidParameterValue.IncorrectPhoneNumber");
        let daily = r#"{"Response":{"SendStatusSet":[{"SerialNo":"","Code":"LimitExceeded.PhoneNumberDailyLimit","Message":"daily"}],"RequestId":"x"}}"#;
        assert_eq!(kind(daily), "fail rate_limited LimitExceeded.PhoneNumberDailyLimit");
        let signature = r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"x"}}"#;
        assert_eq!(kind(signature), "fail auth AuthFailure.SignatureFailure");
        assert_eq!(kind(r#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"too frequent"},"RequestId":"x"}}"#), "retry rate_limited RequestLimitExceeded");
        assert_eq!(kind(r#"{"Response":{"Error":{"Code":"InternalError.Timeout","Message":"t"},"RequestId":"x"}}"#), "retry provider_error InternalError.Timeout");
        assert_eq!(kind(r#"{"Response":{"Error":{"Code":"FailedOperation.TemplateIncorrectOrUnapproved","Message":"t"},"RequestId":"x"}}"#), "fail content_rejected FailedOperation.TemplateIncorrectOrUnapproved");
    }

    #[test]
    fn the_signing_key_chain_follows_the_tc3_recipe() {
        // Recomputed step by step from the documented recipe.
        let header = authorization("AKIDtest", "secret", "sms.tencentcloudapi.com", "SendSms", "{}", 1_700_000_000);
        assert!(header.starts_with("TC3-HMAC-SHA256 Credential=AKIDtest/2023-11-14/sms/tc3_request, SignedHeaders=content-type;host;x-tc-action, Signature="));
        let canonical = format!(
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:sms.tencentcloudapi.com\nx-tc-action:sendsms\n\ncontent-type;host;x-tc-action\n{}",
            hex(&Sha256::digest(b"{}"))
        );
        let to_sign = format!("TC3-HMAC-SHA256\n1700000000\n2023-11-14/sms/tc3_request\n{}", hex(&Sha256::digest(canonical.as_bytes())));
        let k_date = hmac(b"TC3secret", "2023-11-14");
        let k_signing = hmac(&hmac(&k_date, "sms"), "tc3_request");
        assert!(header.ends_with(&format!("Signature={}", hex(&hmac(&k_signing, &to_sign)))));
    }

    #[test]
    fn pulled_reports_become_receipts_in_utc() {
        // The answer as Tencent documents PullSmsSendStatus (2021-01-11), plus a failed report.
        let body = r#"{"Response":{"PullSmsSendStatusSet":[
            {"UserReceiveTime":"2019-10-08 17:18:37","CountryCode":"86","SubscriberNumber":"13711112222","PhoneNumber":"+8613711112222","SerialNo":"5000:104571066915705365784949619","ReportStatus":"SUCCESS","Description":"用户短信送达成功","SessionContext":"d_1"},
            {"UserReceiveTime":"2019-10-08 17:19:02","CountryCode":"86","SubscriberNumber":"13800000000","PhoneNumber":"+8613800000000","SerialNo":"5000:2","ReportStatus":"FAIL","Description":"MK:0001","SessionContext":""}
        ],"RequestId":"b8d6a7e3"}}"#;
        let receipts = pulled_receipts("sms-tencent", StatusCode::OK, None, body).unwrap();
        assert_eq!(receipts.len(), 2);
        let (ok, failed) = (&receipts[0], &receipts[1]);
        assert_eq!((ok.kind.as_str(), ok.provider_message_id.as_str(), ok.delivery_id.as_deref()), ("delivered", "5000:104571066915705365784949619", Some("d_1")));
        assert_eq!(ok.at, "2019-10-08T09:18:37.000Z");
        assert_eq!((ok.error_code.as_deref(), ok.provider.as_str()), (None, "sms-tencent"));
        assert_eq!((failed.kind.as_str(), failed.error_code.as_deref(), failed.delivery_id.as_deref()), ("failed", Some("MK:0001"), None));
        let error = r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"bad"},"RequestId":"x"}}"#;
        assert!(pulled_receipts("sms-tencent", StatusCode::OK, None, error).is_err());
    }
}
