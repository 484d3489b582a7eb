/*
[dependencies]
*/
//! `priority_rank(priority, category)`: the order in which the delivery
//! engine should hand messages to providers, lower first. One-time passwords
//! go first whatever their priority (a login waits on them); then high,
//! normal and low; within a priority, transactional before marketing.
//! A missing priority counts as normal, a missing category as transactional.

use arroyo_udf_plugin::udf;

#[udf]
fn priority_rank(priority: Option<&str>, category: Option<&str>) -> i64 {
    let category = category.unwrap_or("transactional");
    if category == "otp" {
        return 0;
    }
    let lane = match priority.unwrap_or("normal") {
        "high" => 1,
        "low" => 3,
        _ => 2,
    };
    lane * 10 + i64::from(category == "marketing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp_first_then_priority_then_transactional_before_marketing() {
        assert_eq!(priority_rank(Some("low"), Some("otp")), 0);
        let order = [
            priority_rank(Some("high"), Some("transactional")),
            priority_rank(Some("high"), Some("marketing")),
            priority_rank(None, None),
            priority_rank(Some("normal"), Some("marketing")),
            priority_rank(Some("low"), Some("transactional")),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(priority_rank(Some("urgent?"), None), priority_rank(Some("normal"), None));
    }
}
