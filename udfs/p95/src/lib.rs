/*
[dependencies]
*/
//! `p95(values)`: the 95th percentile of a group by nearest rank (the value
//! at rank ceil(0.95 * n) of the sorted non-null values); null for an empty
//! group. An aggregate UDF (its argument is a `Vec`): use it in window
//! aggregates, e.g. provider latency per minute.

use arroyo_udf_plugin::udf;

#[udf]
fn p95(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (values.len() as f64 * 0.95).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        assert_eq!(p95((1..=100).map(f64::from).collect()), Some(95.0));
        assert_eq!(p95(vec![3.0]), Some(3.0));
        assert_eq!(p95(vec![5.0, 1.0]), Some(5.0));
        assert_eq!(p95(vec![]), None);
    }
}
