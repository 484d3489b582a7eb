//! The SMS channel: one module per provider, each with its config, request
//! building (and signing) and the classification of its answers.

pub mod aliyun;
#[cfg(feature = "fake")]
pub mod fake;
pub mod tencent;
pub mod twilio;

pub use aliyun::{AliyunChannel, AliyunConfig};
pub use tencent::{TencentChannel, TencentConfig};
pub use twilio::{TwilioChannel, TwilioConfig};

/// `+8613800138000` -> `13800138000` for providers that take national
/// numbers of their home country and `00`-prefixed international ones.
pub(crate) fn national_or_international(address: &str, home_prefix: &str) -> String {
    let digits = address.trim();
    match digits.strip_prefix(home_prefix) {
        Some(national) => national.to_string(),
        None => match digits.strip_prefix('+') {
            Some(international) => format!("00{international}"),
            None => digits.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn home_numbers_lose_the_country_code_others_get_00() {
        assert_eq!(super::national_or_international("+8613800138000", "+86"), "13800138000");
        assert_eq!(super::national_or_international("+14155550100", "+86"), "0014155550100");
        assert_eq!(super::national_or_international("13800138000", "+86"), "13800138000");
    }
}

/// A provider's `YYYY-MM-DD HH:MM:SS` in China Standard Time (UTC+8, as Aliyun and Tencent report
/// times) as RFC 3339 UTC with milliseconds; now when missing or unreadable.
pub(crate) fn china_time_utc(text: Option<&str>) -> String {
    let china = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    text.and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").ok())
        .and_then(|t| t.and_local_timezone(china).single())
        .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
