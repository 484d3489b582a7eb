/*
[dependencies]
email_address = "0.2"
*/
//! `normalize_email(address)`: the address trimmed and with its domain
//! lower-cased (the local part is case-sensitive by RFC 5321 and kept), or
//! null when it is not a valid RFC 5322 address (`email_address`). Use
//! `normalize_email(x) IS NOT NULL` as the validity test: arroyo-udf-plugin
//! 0.2 cannot return `bool` (its macro does not compile for it).
//! Display-name forms (`Li <li@x.cn>`) are refused: a recipient is an address.

use arroyo_udf_plugin::udf;
use email_address::{EmailAddress, Options};

#[udf]
fn normalize_email(address: &str) -> Option<String> {
    let address = address.trim();
    let options = Options::default().without_display_text().without_domain_literal();
    let parsed = EmailAddress::parse_with_options(address, options).ok()?;
    // A deliverable address has a dotted domain.
    if !parsed.domain().contains('.') {
        return None;
    }
    Some(format!("{}@{}", parsed.local_part(), parsed.domain().to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_normalized() {
        assert_eq!(normalize_email(" Li.Wei@Example.COM ").as_deref(), Some("Li.Wei@example.com"));
        assert_eq!(normalize_email("a+tag@mail.example.cn").as_deref(), Some("a+tag@mail.example.cn"));
    }

    #[test]
    fn invalid_addresses_are_null() {
        for bad in ["", "li", "li@", "@example.com", "li@@example.com", "li@localhost", "Li <li@example.com>", "li@[127.0.0.1]", "li wei@example.com"] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }
}
