use notiflow_delivery::SecretRef;
use serde::Deserialize;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for relays on this host (credentials are refused
    /// unless the host is a loopback address).
    None,
}

/// An SMTP relay account as an email provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Relay host name; with TLS it must match the relay's certificate.
    pub host: String,
    /// Port; default 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Security,
    /// SMTP AUTH user name (PLAIN or LOGIN); absent: no AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// Where the SMTP password is.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Sender mailbox, `Name <address>` or `address`.
    pub from: String,
    /// Reply-To mailbox, if replies go elsewhere.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Domain of the Message-ID (`<delivery_id@domain>`); default: the sender's domain.
    #[serde(default)]
    pub message_id_domain: Option<String>,
    /// Connections open at once (sends beyond it wait); kept open between messages.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Deadline for each SMTP command, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_pool_size() -> u32 {
    8
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        })
    }
}
