/*
[dependencies]
phonenumber = "0.3"
*/
//! `normalize_phone(number, region)`: the number in E.164 (`+8613812345678`),
//! or null when it is not a valid number. `region` (ISO 3166 alpha-2, e.g.
//! `CN`) is used for numbers written without a country code; pass the
//! recipient's region or the pipeline's default. Numbers starting with `+`
//! need no region. An unknown region code fails the row (a configuration
//! mistake, not bad user input).

use arroyo_udf_plugin::udf;
use phonenumber::Mode;
use phonenumber::country::Id;

pub fn try_normalize(number: &str, region: Option<&str>) -> Result<Option<String>, String> {
    let region = match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(code) => Some(code.to_ascii_uppercase().parse::<Id>().map_err(|_| format!("unknown region code `{code}`"))?),
        None => None,
    };
    let Ok(parsed) = phonenumber::parse(region, number.trim()) else { return Ok(None) };
    Ok(phonenumber::is_valid(&parsed).then(|| parsed.format().mode(Mode::E164).to_string()))
}

#[udf]
fn normalize_phone(number: &str, region: Option<&str>) -> Option<String> {
    match try_normalize(number, region) {
        Ok(e164) => e164,
        Err(message) => panic!("normalize_phone: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_and_international_numbers_become_e164() {
        assert_eq!(normalize_phone("138 1234 5678", Some("CN")).as_deref(), Some("+8613812345678"));
        assert_eq!(normalize_phone("+86 138-1234-5678", None).as_deref(), Some("+8613812345678"));
        assert_eq!(normalize_phone("(650) 253-0000", Some("us")).as_deref(), Some("+16502530000"));
        assert_eq!(normalize_phone("030 123456", Some("DE")).as_deref(), Some("+4930123456"));
    }

    #[test]
    fn invalid_numbers_are_null() {
        assert_eq!(normalize_phone("12", Some("CN")), None);
        assert_eq!(normalize_phone("not a phone", Some("CN")), None);
        assert_eq!(normalize_phone("138 1234 5678", None), None, "national number without a region");
        assert_eq!(normalize_phone("+86 123", None), None);
    }

    #[test]
    fn an_unknown_region_is_an_error() {
        assert!(try_normalize("138 1234 5678", Some("XX")).unwrap_err().contains("unknown region"));
        assert!(std::panic::catch_unwind(|| normalize_phone("1", Some("ZZZ"))).is_err());
    }
}
