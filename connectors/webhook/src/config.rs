use std::time::Duration;

/// Settings of the webhook channel.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Provider name in send results.
    pub provider: String,
    /// Answer deadline per attempt (connect + response).
    pub timeout: Duration,
    /// Targets allowed although private or loopback: IP addresses or networks
    /// (`10.1.2.3`, `10.0.0.0/8`, `::1/128`). Empty: public targets only.
    pub allow: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig { provider: "webhook".into(), timeout: Duration::from_secs(10), allow: Vec::new() }
    }
}
