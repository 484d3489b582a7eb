use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list, as librdkafka's `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Replication factor for topics notiflow creates (use 3 on a real cluster).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long a broker may hold a fetch open when it has less than
    /// `fetch.min.bytes`. Low by default: some brokers (tansu) hold every fetch
    /// for the full wait, which would add that much latency to each batch.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_max_ms: u32,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`):
    /// throughput against latency. Measured on tansu at 20k requests/s:
    /// 1 ms gives p50 34 / p99 190-285 ms (many small produce requests make
    /// the broker stall), 5 ms gives p50 48 / p99 68 ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// How long the group waits for a silent member before moving its
    /// partitions elsewhere. A restarted instance gets its partitions back
    /// only after the old member's session expires, so keep it short.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// TLS and SASL to the brokers (absent: plaintext).
    #[serde(default)]
    pub security: Option<KafkaSecurity>,
    /// Extra librdkafka properties, set last. Secrets belong in the
    /// environment: `NOTIFLOW_KAFKA_SASL_PASSWORD` is read at start.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[kafka.security]`: how the connection to the brokers is protected and who we are.
///
/// ```toml
/// [kafka.security]
/// protocol = "sasl_ssl"
/// ca_file = "/etc/notiflow/kafka-ca.pem"
/// sasl_mechanism = "SCRAM-SHA-512"
/// sasl_username = "notiflow"
/// sasl_password_env = "NOTIFLOW_KAFKA_PASSWORD"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `ssl` (TLS), `sasl_ssl` (SASL inside TLS) or `sasl_plaintext` (SASL, no TLS: trusted networks only).
    pub protocol: SecurityProtocol,
    /// PEM file of the CAs that sign the brokers' certificates; absent: the system's CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that authenticate clients by TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (required with the sasl_ protocols).
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Name of the environment variable holding the SASL password (never the password itself).
    #[serde(default)]
    pub sasl_password_env: Option<String>,
    /// Check that the broker's certificate names the host we connect to (on unless a test CA lacks names).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Ssl,
    SaslSsl,
    SaslPlaintext,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

fn yes() -> bool {
    true
}

impl KafkaSecurity {
    /// Whether this can work at all: files exist, SASL has what it needs. Called at start-up
    /// so a bad setting fails there, not as a vague broker timeout.
    pub fn check(&self) -> Result<(), String> {
        for (key, file) in [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if let Some(path) = file
                && !path.is_file()
            {
                return Err(format!("[kafka.security] {key}: {} is not a readable file", path.display()));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("[kafka.security] cert_file and key_file go together".into());
        }
        let sasl = matches!(self.protocol, SecurityProtocol::SaslSsl | SecurityProtocol::SaslPlaintext);
        if sasl {
            if self.sasl_mechanism.is_none() || self.sasl_username.is_none() {
                return Err("[kafka.security] the sasl_ protocols need sasl_mechanism and sasl_username".into());
            }
            match &self.sasl_password_env {
                Some(var) if std::env::var(var).is_err() => return Err(format!("[kafka.security] sasl_password_env: environment variable {var} is not set")),
                None => return Err("[kafka.security] the sasl_ protocols need sasl_password_env".into()),
                _ => {}
            }
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            return Err("[kafka.security] sasl_mechanism and sasl_username need protocol sasl_ssl or sasl_plaintext".into());
        }
        Ok(())
    }

    fn apply(&self, config: &mut ClientConfig) {
        let protocol = match self.protocol {
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslSsl => "sasl_ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
        };
        config.set("security.protocol", protocol);
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config.set("ssl.certificate.location", path(cert)).set("ssl.key.location", path(key));
        }
        config.set("ssl.endpoint.identification.algorithm", if self.verify_hostname { "https" } else { "none" });
        if let Some(mechanism) = self.sasl_mechanism {
            let name = match mechanism {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            };
            config.set("sasl.mechanism", name);
        }
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = self.sasl_password_env.as_ref().and_then(|var| std::env::var(var).ok()) {
            config.set("sasl.password", password);
        }
    }
}

fn default_replication() -> i32 {
    1
}

fn default_fetch_wait_ms() -> u32 {
    10
}

fn default_linger_ms() -> u32 {
    5
}

fn default_session_timeout_ms() -> u32 {
    10_000
}

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            replication_factor: default_replication(),
            fetch_wait_max_ms: default_fetch_wait_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            linger_ms: default_linger_ms(),
            security: None,
            properties: BTreeMap::new(),
        }
    }

    /// The common client settings; callers add consumer or producer ones.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        if let Some(security) = &self.security {
            security.apply(&mut config);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        if let Ok(password) = std::env::var("NOTIFLOW_KAFKA_SASL_PASSWORD") {
            config.set("sasl.password", password);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(toml_text: &str) -> KafkaSecurity {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn security_settings_become_librdkafka_properties() {
        // SAFETY: the variable is this test's own.
        unsafe { std::env::set_var("NOTIFLOW_TEST_KAFKA_SECURITY_PW", "s3cret") };
        let mut kafka = KafkaConfig::new("broker:9093");
        kafka.security = Some(security(
            "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"notiflow\"\nsasl_password_env = \"NOTIFLOW_TEST_KAFKA_SECURITY_PW\"\n",
        ));
        kafka.security.as_ref().unwrap().check().unwrap();
        let config = kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("notiflow"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(config.get("ssl.ca.location"), None, "the system's CAs unless ca_file is given");
    }

    #[test]
    fn impossible_security_settings_fail_at_start_with_what_is_wrong() {
        let missing_file = security("protocol = \"ssl\"\nca_file = \"/nonexistent/ca.pem\"\n");
        assert!(missing_file.check().unwrap_err().contains("ca_file: /nonexistent/ca.pem"));
        let no_user = security("protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\n");
        assert!(no_user.check().unwrap_err().contains("sasl_username"));
        let unset = security("protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password_env = \"NOTIFLOW_TEST_UNSET_VAR\"\n");
        assert!(unset.check().unwrap_err().contains("NOTIFLOW_TEST_UNSET_VAR is not set"));
        let sasl_without_protocol = security("protocol = \"ssl\"\nsasl_username = \"u\"\n");
        assert!(sasl_without_protocol.check().is_err());
        assert!(toml::from_str::<KafkaSecurity>("protocol = \"tls\"\n").is_err(), "unknown protocols are refused");
    }
}
