/*
[dependencies]
*/
//! `mask_pii(text)`: masks personal data before text goes to logs, events or
//! archives: the local part of every e-mail address (first character kept)
//! and every run of 7 or more digits, which may be separated by spaces,
//! dashes or dots and start with `+` (phone, ID-card and account numbers;
//! the last 4 digits kept). Everything else is unchanged.

use arroyo_udf_plugin::udf;

/// Shortest digit run treated as a number worth masking.
const MIN_DIGITS: usize = 7;
const KEEP_LAST: usize = 4;

#[udf]
fn mask_pii(text: &str) -> String {
    mask_numbers(&mask_emails(text))
}

fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-!#$&'*/=?^`{|}~".contains(c)
}

fn mask_emails(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = chars.clone();
    for (at, _) in chars.iter().enumerate().filter(|(_, c)| **c == '@') {
        let start = (0..at).rev().take_while(|i| is_local_char(chars[*i])).last();
        let domain_ok = chars.get(at + 1).is_some_and(|c| c.is_alphanumeric());
        if let (Some(start), true) = (start, domain_ok) {
            for slot in out.iter_mut().take(at).skip(start + 1) {
                *slot = '*';
            }
        }
    }
    out.into_iter().collect()
}

fn mask_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A run: digits, with single separators between digits.
        let mut end = i;
        let mut digits = vec![];
        let mut j = i;
        while j < chars.len() {
            if chars[j].is_ascii_digit() {
                digits.push(j);
                end = j + 1;
                j += 1;
            } else if " -.".contains(chars[j]) && chars.get(j + 1).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            } else {
                break;
            }
        }
        if digits.len() >= MIN_DIGITS && !is_date(&chars[i..end]) {
            for &d in &digits[..digits.len() - KEEP_LAST] {
                out[d] = '*';
            }
        }
        i = end.max(i + 1);
    }
    out.into_iter().collect()
}

/// `2026-11-23` (and `2026.11.23`): dates are not personal data.
fn is_date(run: &[char]) -> bool {
    let text: String = run.iter().collect();
    let groups: Vec<usize> = text.split(['-', '.']).map(str::len).collect();
    groups == [4, 2, 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_addresses_and_long_numbers() {
        assert_eq!(mask_pii("mail li.wei@example.com now"), "mail l*****@example.com now");
        assert_eq!(mask_pii("call +86 138-1234-5678"), "call +** ***-****-5678");
        assert_eq!(mask_pii("id 110101199003070011"), "id **************0011");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for text in ["order 12345 shipped", "on 2026-11-23 at 10:30", "", "a @ b", "price 3.50", "您好"] {
            assert_eq!(mask_pii(text), text);
        }
    }
}
