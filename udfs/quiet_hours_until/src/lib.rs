/*
[dependencies]
chrono = { version = "0.4", default-features = false, features = ["std"] }
chrono-tz = "0.10"
*/
//! `quiet_hours_until(tz, start, end, ts_ms)`: when `ts_ms` (epoch ms) falls
//! inside the recipient's quiet window `[start, end)` (local wall-clock times
//! `HH:MM` in IANA zone `tz`), the first instant after it that is outside the
//! window (epoch ms); null when `ts_ms` is outside it (send now).
//!
//! A window whose end is not after its start crosses midnight (`22:00`-`07:00`).
//! Equal start and end mean no quiet hours. Across DST: the end is the local
//! wall-clock time on the right day; when that time does not exist (spring
//! forward), the first instant after the gap; when it exists twice (fall
//! back), the earlier one. An unknown zone or a malformed time fails the row.
//! Timestamps given to a UDF as SQL TIMESTAMPs arrive as epoch milliseconds.

use arroyo_udf_plugin::udf;
use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;

pub fn parse_zone(tz: &str) -> Result<Tz, String> {
    tz.trim().parse::<Tz>().map_err(|_| format!("unknown time zone `{tz}`"))
}

fn parse_time(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M").map_err(|_| format!("`{text}` is not a time of day HH:MM"))
}

/// The first instant at or after local `date time` in `zone`.
fn local_instant(zone: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Tz> {
    let mut wall = date.and_time(time);
    // A DST gap is at most a few hours: step until the wall time exists.
    for _ in 0..(24 * 4) {
        match zone.from_local_datetime(&wall) {
            LocalResult::Single(t) => return t,
            LocalResult::Ambiguous(earlier, _) => return earlier,
            LocalResult::None => wall += Duration::minutes(15),
        }
    }
    zone.from_utc_datetime(&wall)
}

pub fn try_until(tz: &str, start: &str, end: &str, ts_ms: i64) -> Result<Option<i64>, String> {
    let zone = parse_zone(tz)?;
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    if start == end {
        return Ok(None);
    }
    let at = zone.timestamp_millis_opt(ts_ms).single().ok_or_else(|| format!("{ts_ms} is not a valid timestamp"))?;
    let local = at.time();
    let today = at.date_naive();
    let end_day = if start < end {
        if local < start || local >= end {
            return Ok(None);
        }
        today
    } else if local >= start {
        today.succ_opt().ok_or("date out of range")?
    } else if local < end {
        today
    } else {
        return Ok(None);
    };
    let until = local_instant(zone, end_day, end).timestamp_millis();
    Ok((until > ts_ms).then_some(until))
}

#[udf]
fn quiet_hours_until(tz: &str, start: &str, end: &str, ts_ms: i64) -> Option<i64> {
    match try_until(tz, start, end, ts_ms) {
        Ok(until) => until,
        Err(message) => panic!("quiet_hours_until: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(zone: &str, text: &str) -> i64 {
        let zone: Tz = zone.parse().unwrap();
        let wall = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        zone.from_local_datetime(&wall).earliest().unwrap().timestamp_millis()
    }

    #[test]
    fn window_across_midnight() {
        let z = "Asia/Shanghai";
        let morning = ms(z, "2026-11-24 07:00");
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", ms(z, "2026-11-23 23:30")), Some(morning));
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", ms(z, "2026-11-24 06:59")), Some(morning));
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", ms(z, "2026-11-23 22:00")), Some(morning), "start is inside");
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", ms(z, "2026-11-24 07:00")), None, "end is outside");
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", ms(z, "2026-11-23 12:00")), None);
    }

    #[test]
    fn window_within_a_day_and_empty_window() {
        let z = "Europe/Berlin";
        assert_eq!(quiet_hours_until(z, "12:00", "14:00", ms(z, "2026-06-01 13:00")), Some(ms(z, "2026-06-01 14:00")));
        assert_eq!(quiet_hours_until(z, "12:00", "14:00", ms(z, "2026-06-01 14:30")), None);
        assert_eq!(quiet_hours_until(z, "09:00", "09:00", ms(z, "2026-06-01 09:00")), None);
    }

    #[test]
    fn dst_changes() {
        // Spring forward in New York on 2026-03-08: 02:00-03:00 does not exist.
        let z = "America/New_York";
        let ends_in_gap = quiet_hours_until(z, "22:00", "02:30", ms(z, "2026-03-07 23:00")).unwrap();
        assert_eq!(ends_in_gap, ms(z, "2026-03-08 03:00"), "first instant after the gap");
        // The night is an hour shorter: 22:00 EST to 07:00 EDT is 8 hours.
        let start = ms(z, "2026-03-07 22:00");
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", start).unwrap() - start, 8 * 3_600_000);
        // Fall back on 2026-11-01: 01:30 happens twice; the window ends at the earlier.
        let end = quiet_hours_until(z, "22:00", "01:30", ms(z, "2026-10-31 23:00")).unwrap();
        assert_eq!(end, ms(z, "2026-11-01 01:30"));
        let start = ms(z, "2026-10-31 22:00");
        assert_eq!(quiet_hours_until(z, "22:00", "07:00", start).unwrap() - start, 10 * 3_600_000);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(try_until("Mars/Olympus", "22:00", "07:00", 0).unwrap_err().contains("unknown time zone"));
        assert!(try_until("UTC", "25:00", "07:00", 0).unwrap_err().contains("HH:MM"));
        assert!(std::panic::catch_unwind(|| quiet_hours_until("Nowhere", "22:00", "07:00", 0)).is_err());
    }
}
