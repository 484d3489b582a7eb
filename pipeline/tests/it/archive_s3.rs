//! The Parquet archive on S3 (moto's S3 server, spoken to over the S3 wire
//! protocol by object_store): commits with their offsets, recovery from a
//! crash before the commit point, and reports read back from the bucket.

use std::collections::BTreeMap;
use std::sync::Arc;

use notiflow::report;
use notiflow::warehouse::DELIVERIES;
use notiflow_connector::Record;
use notiflow_parquet::{ArchiveLocation, DatasetArchive};
use object_store::PutPayload;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::support;

fn s3_options() -> BTreeMap<String, String> {
    let endpoint = std::env::var("NOTIFLOW_TEST_S3_ENDPOINT").expect("NOTIFLOW_TEST_S3_ENDPOINT (scripts/test.sh starts moto's S3 server)");
    [("endpoint", endpoint.as_str()), ("allow_http", "true"), ("region", "us-east-1"), ("access_key_id", "test"), ("secret_access_key", "test")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn the_archive_commits_to_s3_recovers_and_reports_read_it_back() {
    let options = s3_options();
    let bucket = support::unique("nf-archive").to_lowercase().replace('_', "-");
    let created = reqwest::Client::new().put(format!("{}/{bucket}", options["endpoint"])).send().await.unwrap();
    assert!(created.status().is_success(), "create bucket: {}", created.status());
    let url = format!("s3://{bucket}/archive");
    let location = ArchiveLocation::s3(&url, &options).unwrap();

    let now = chrono::Utc::now();
    let rows: Vec<_> = (0..30i64)
        .map(|i| {
            let state = if i % 5 == 0 { "failed" } else { "delivered" };
            let row = serde_json::json!({"delivery_id": format!("d{i}"), "tenant": "acme", "channel": "sms", "provider": "sms-aliyun", "state": state,
                "sent_at": (now + chrono::Duration::seconds(i)).to_rfc3339(), "attempts": 1});
            let record = Record { topic: Arc::from("t"), partition: (i % 2) as i32, offset: i / 2, key: None, payload: Some(row.to_string().into_bytes()), timestamp_ms: None, headers: vec![] };
            DELIVERIES.decode(&record).unwrap()
        })
        .collect();
    let mut archive = DatasetArchive::open(&location, DELIVERIES.name, 3).await.unwrap();
    for chunk in rows.chunks(15) {
        let upto = chunk.iter().fold(BTreeMap::new(), |mut m, r| {
            m.insert(r.partition, r.offset + 1);
            m
        });
        archive.commit(&[(now, vec![DELIVERIES.to_batch(&chunk.iter().collect::<Vec<_>>())])], &upto).await.unwrap();
    }

    // A crash after staging, before the manifest: the staged object is dropped on open; offsets resume.
    let staged = Path::from(format!("archive/_staging/{}/orphan.parquet", DELIVERIES.name));
    location.store().put(&staged, PutPayload::from(vec![1u8, 2, 3])).await.unwrap();
    let reopened = DatasetArchive::open(&location, DELIVERIES.name, 3).await.unwrap();
    assert_eq!(reopened.next_offsets(), &BTreeMap::from([(0, 15), (1, 15)]));
    assert!(location.store().head(&staged).await.is_err(), "the orphan is gone");

    // Reports read the bucket (DataFusion over object_store), through the config as `notiflow report` does.
    let mut config = notiflow::config::Config::embedded();
    config.archive.url = Some(url);
    config.archive.options = options;
    let reports = support::sql_dir().join("../dashboards/reports");
    let rate = report::run(&config, &report::load(&reports, "delivery_rate").unwrap(), None).await.unwrap();
    assert_eq!(rate.cell("sms", "deliveries"), Some("30"), "{}", rate.render());
    assert_eq!(rate.cell("sms", "failed"), Some("6"), "{}", rate.render());
    assert_eq!(rate.cell("sms", "delivery_rate_pct"), Some("80"), "{}", rate.render());
}
