use std::time::Duration;

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// The provider's id for it (joins delivery receipts later).
    pub provider_message_id: Option<String>,
}

/// Why a send failed, the same words for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The address is wrong or gone (unknown number, 410 Gone, bounced mailbox).
    InvalidRecipient,
    /// Our credentials or signature were refused.
    Auth,
    /// The provider refused the content (template not approved, spam filter).
    ContentRejected,
    /// The target is not allowed (SSRF guard: private or loopback address).
    BlockedTarget,
    /// Too many requests (429 and the like).
    RateLimited,
    /// The provider failed (5xx, malformed answer).
    ProviderError,
    /// No answer in time, or no connection.
    Timeout,
    /// The message expired before it could be sent.
    Expired,
    /// Retryable failures until the last attempt.
    AttemptsExhausted,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidRecipient => "invalid_recipient",
            FailureReason::Auth => "auth",
            FailureReason::ContentRejected => "content_rejected",
            FailureReason::BlockedTarget => "blocked_target",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::ProviderError => "provider_error",
            FailureReason::Timeout => "timeout",
            FailureReason::Expired => "expired",
            FailureReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// A failed attempt, typed by what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (after `retry_after` when the provider said so).
    #[error("{} (provider code {provider_code}): {detail}", reason.as_str())]
    Retryable { reason: FailureReason, provider_code: String, detail: String, retry_after: Option<Duration> },
    /// Retrying cannot help.
    #[error("{} (provider code {provider_code}): {detail}", reason.as_str())]
    Permanent { reason: FailureReason, provider_code: String, detail: String },
}

impl SendError {
    pub fn retryable(reason: FailureReason, provider_code: impl Into<String>, detail: impl Into<String>) -> Self {
        SendError::Retryable { reason, provider_code: provider_code.into(), detail: detail.into(), retry_after: None }
    }

    pub fn permanent(reason: FailureReason, provider_code: impl Into<String>, detail: impl Into<String>) -> Self {
        SendError::Permanent { reason, provider_code: provider_code.into(), detail: detail.into() }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            SendError::Retryable { reason, .. } | SendError::Permanent { reason, .. } => *reason,
        }
    }

    pub fn provider_code(&self) -> &str {
        match self {
            SendError::Retryable { provider_code, .. } | SendError::Permanent { provider_code, .. } => provider_code,
        }
    }
}

/// One line per outcome (`accepted <id>`, `retry <reason> <code>`, `fail <reason> <code>`):
/// what the providers' classification tests compare.
pub fn summary(outcome: &Result<Accepted, SendError>) -> String {
    match outcome {
        Ok(a) => format!("accepted {}", a.provider_message_id.as_deref().unwrap_or_default()),
        Err(SendError::Retryable { reason, provider_code, .. }) => format!("retry {} {provider_code}", reason.as_str()),
        Err(SendError::Permanent { reason, provider_code, .. }) => format!("fail {} {provider_code}", reason.as_str()),
    }
}
