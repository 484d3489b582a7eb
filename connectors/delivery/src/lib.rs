//! The delivery engine every channel shares. A channel is given one
//! [`Delivery`] (a record of a dispatch topic: one recipient on one channel,
//! content rendered) and answers with the provider's acceptance or a
//! [`SendError`] classified by what to do next: retry later, or fail now with
//! a normalized [`FailureReason`] and the provider's own code. [`deliver`]
//! drives the attempts (backoff with jitter, Retry-After, expiry) and reports
//! each one as a [`SendResult`] for `notify.sends`.

mod delivery;
mod outcome;
mod retry;

pub use delivery::Delivery;
pub use outcome::{Accepted, FailureReason, SendError};
pub use retry::{Final, RetryPolicy, SendResult, deliver};

/// One provider of a channel (an SMS vendor account, an SMTP relay, a webhook
/// endpoint family).
pub trait Channel: Send + Sync {
    /// The channel it serves (`sms`, `email`, `webhook`, ...).
    fn channel(&self) -> &str;
    /// The provider's name in send results (`twilio`, `smtp:relay-1`, ...).
    fn provider(&self) -> &str;
    /// One attempt. Never counts a transport-level OK as accepted without
    /// reading what the provider answered.
    fn send(&self, delivery: &Delivery, attempt: u32) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}
