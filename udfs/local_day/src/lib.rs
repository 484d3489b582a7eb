/*
[dependencies]
chrono = { version = "0.4", default-features = false, features = ["std"] }
chrono-tz = "0.10"
*/
//! `local_day(tz, ts_ms)`: the calendar day `YYYY-MM-DD` of instant `ts_ms`
//! (epoch ms; SQL TIMESTAMPs arrive as epoch ms) in IANA zone `tz`. Daily
//! caps count per recipient per *local* day: use it in the cap's PARTITION BY.
//! An unknown zone fails the row.

use arroyo_udf_plugin::udf;
use chrono::TimeZone;
use chrono_tz::Tz;

pub fn try_local_day(tz: &str, ts_ms: i64) -> Result<String, String> {
    let zone: Tz = tz.trim().parse().map_err(|_| format!("unknown time zone `{tz}`"))?;
    let at = zone.timestamp_millis_opt(ts_ms).single().ok_or_else(|| format!("{ts_ms} is not a valid timestamp"))?;
    Ok(at.format("%Y-%m-%d").to_string())
}

#[udf]
fn local_day(tz: &str, ts_ms: i64) -> String {
    match try_local_day(tz, ts_ms) {
        Ok(day) => day,
        Err(message) => panic!("local_day: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_depends_on_the_zone() {
        // 2026-11-23 17:30 UTC is already the 24th in Shanghai, still the 23rd in New York.
        let ts = 1_795_455_000_000;
        assert_eq!(local_day("UTC", ts), "2026-11-23");
        assert_eq!(local_day("Asia/Shanghai", ts), "2026-11-24");
        assert_eq!(local_day("America/New_York", ts), "2026-11-23");
        assert_eq!(local_day("UTC", 0), "1970-01-01");
    }

    #[test]
    fn an_unknown_zone_is_an_error() {
        assert!(try_local_day("Asia/Atlantis", 0).unwrap_err().contains("unknown time zone"));
        assert!(std::panic::catch_unwind(|| local_day("", 0)).is_err());
    }
}
