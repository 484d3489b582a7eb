/*
[dependencies]
*/
//! `content_hash(text)`: FNV-1a 64 of the UTF-8 bytes, as 16 lower-case hex
//! digits. Stable across versions and machines (unlike std's hasher), so it
//! can key dedupe state that outlives a deploy.

use arroyo_udf_plugin::udf;

#[udf]
fn content_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        assert_eq!(content_hash(""), "cbf29ce484222325");
        assert_eq!(content_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(content_hash("hello"), content_hash("hellp"));
    }
}
