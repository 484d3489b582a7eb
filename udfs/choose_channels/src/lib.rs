/*
[dependencies]
serde_json = "1"
*/
//! `choose_channels(requested, template_channels, reachable, opt_outs, category, want)`:
//! which channels one recipient gets a message on.
//!
//! - `requested`: the request's `channels` (JSON array); null = every channel of the template.
//! - `template_channels`: the approved template's `channels` (JSON array), in preference order.
//! - `reachable`: where the recipient can be reached: a JSON object of channel -> address (a profile's
//!   `addresses`; null or empty addresses do not count) or a JSON array of channels (a direct address).
//! - `opt_outs`: the profile's opt-outs, a JSON array of `"category:channel"` entries; `*` matches any
//!   category or channel (`"marketing:*"`, `"*:sms"`). One-time passwords are only stopped by an explicit
//!   `"otp:<channel>"`: wildcards and other categories never block a login code.
//! - `want = 'send'`: the chosen channels; `want = 'opted_out'`: the channels that would have been chosen
//!   but for an opt-out (for `opted_out` events).
//!
//! Result: channel names joined by `,` in the template's order, `''` when none. A malformed JSON argument
//! or an unknown `want` fails the row.

use arroyo_udf_plugin::udf;
use serde_json::Value;

fn parse(name: &str, text: Option<&str>) -> Option<Value> {
    text.map(|t| serde_json::from_str(t).unwrap_or_else(|e| panic!("choose_channels: {name} is not JSON: {e}")))
}

fn names(name: &str, value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_else(|| panic!("choose_channels: {name} must hold strings")).to_string())
            .collect(),
        Value::Null => vec![],
        _ => panic!("choose_channels: {name} must be a JSON array"),
    }
}

fn is_reachable(reachable: &Value, channel: &str) -> bool {
    match reachable {
        Value::Object(addresses) => match addresses.get(channel) {
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        },
        Value::Array(channels) => channels.iter().any(|c| c.as_str() == Some(channel)),
        _ => false,
    }
}

fn opted_out(opt_outs: &[String], category: &str, channel: &str) -> bool {
    opt_outs.iter().any(|entry| {
        let (c, ch) = entry.split_once(':').unwrap_or((entry.as_str(), "*"));
        if category == "otp" {
            return c == "otp" && ch == channel;
        }
        (c == "*" || c == category) && (ch == "*" || ch == channel)
    })
}

pub fn choose(
    requested: Option<&str>,
    template_channels: &str,
    reachable: Option<&str>,
    opt_outs: Option<&str>,
    category: &str,
    want: &str,
) -> String {
    let requested = parse("requested", requested).map(|v| names("requested", &v));
    let template = names("template_channels", &parse("template_channels", Some(template_channels)).unwrap_or(Value::Null));
    let reachable = parse("reachable", reachable).unwrap_or(Value::Null);
    let opt_outs = names("opt_outs", &parse("opt_outs", opt_outs).unwrap_or(Value::Null));
    let wanted_opted_out = match want {
        "send" => false,
        "opted_out" => true,
        other => panic!("choose_channels: want must be 'send' or 'opted_out', not `{other}`"),
    };
    let chosen: Vec<&str> = template
        .iter()
        .filter(|ch| requested.as_ref().is_none_or(|r| r.contains(ch)))
        .filter(|ch| is_reachable(&reachable, ch))
        .filter(|ch| opted_out(&opt_outs, category, ch) == wanted_opted_out)
        .map(String::as_str)
        .collect();
    chosen.join(",")
}

#[udf]
fn choose_channels(
    requested: Option<&str>,
    template_channels: &str,
    reachable: Option<&str>,
    opt_outs: Option<&str>,
    category: &str,
    want: &str,
) -> String {
    choose(requested, template_channels, reachable, opt_outs, category, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"["email","sms","inbox"]"#;
    const PROFILE: &str = r#"{"email":"ann@example.com","sms":"+8613800138000","inbox":"u-1","wecom":null}"#;

    #[test]
    fn requested_and_template_and_reachable_intersect_in_template_order() {
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), None, "transactional", "send"), "email,sms,inbox");
        assert_eq!(choose(Some(r#"["inbox","sms","wecom"]"#), TEMPLATE, Some(PROFILE), None, "transactional", "send"), "sms,inbox");
        assert_eq!(choose(None, TEMPLATE, Some(r#"["sms"]"#), None, "otp", "send"), "sms");
        assert_eq!(choose(None, TEMPLATE, Some(r#"{"email":" "}"#), None, "otp", "send"), "", "a blank address is no address");
        assert_eq!(choose(None, TEMPLATE, None, None, "otp", "send"), "");
    }

    #[test]
    fn opt_outs_remove_channels_per_category_with_wildcards() {
        let outs = Some(r#"["marketing:*","*:sms"]"#);
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), outs, "marketing", "send"), "");
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), outs, "marketing", "opted_out"), "email,sms,inbox");
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), outs, "transactional", "send"), "email,inbox");
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), outs, "transactional", "opted_out"), "sms");
    }

    #[test]
    fn one_time_passwords_ignore_all_but_explicit_otp_opt_outs() {
        let outs = Some(r#"["*:*","marketing:sms","*:email"]"#);
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), outs, "otp", "send"), "email,sms,inbox");
        assert_eq!(choose(None, TEMPLATE, Some(PROFILE), Some(r#"["otp:sms"]"#), "otp", "send"), "email,inbox");
    }

    #[test]
    #[should_panic(expected = "requested is not JSON")]
    fn malformed_json_fails_the_row() {
        choose(Some("[email"), TEMPLATE, Some(PROFILE), None, "otp", "send");
    }
}
