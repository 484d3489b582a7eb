//! The delivery engine every channel shares. A channel is given one
//! [`Delivery`] (a record of a dispatch topic: one recipient on one channel,
//! content rendered) and answers with the provider's acceptance or a
//! [`SendError`] classified by what to do next: retry later, or fail now with
//! a normalized [`FailureReason`] and the provider's own code.
//!
//! Around that: [`ProviderGroup`] (weighted providers of one channel, circuit
//! breakers, token buckets, concurrency limits), [`deliver`] (attempts with
//! failover, backoff with jitter, Retry-After, expiry; one [`SendResult`] per
//! attempt for `notify.sends`) and [`Scheduler`] (strict-priority lanes and
//! workers per channel, so channels never wait for each other).

mod breaker;
mod delivery;
mod group;
mod lanes;
mod outcome;
mod receipt;
mod retry;
mod scheduler;
mod secret;
mod token;

#[cfg(feature = "fake")]
pub mod fake;
#[cfg(feature = "http")]
pub mod http;

use std::pin::Pin;

pub use breaker::BreakerConfig;
pub use delivery::Delivery;
pub use group::{Lease, ProviderGroup, ProviderLimits, Route};
pub use lanes::{Lane, LaneQueue};
/// A job's hold on the partition it was read from (see [`Job::hold`]).
pub use notiflow_connector::Hold;
pub use outcome::{Accepted, FailureReason, SendError, summary};
pub use receipt::Receipt;
pub use retry::{Final, RetryPolicy, SendResult, deliver};
pub use scheduler::{Done, Job, Refused, Scheduler};
pub use secret::{Secret, SecretRef};
pub use token::TokenCache;

/// What [`Channel::send`] returns (boxed so providers of one channel can sit
/// side by side in a [`ProviderGroup`]).
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Accepted, SendError>> + Send + 'a>>;

/// One provider of a channel (an SMS vendor account, an SMTP relay, a webhook
/// endpoint family).
pub trait Channel: Send + Sync {
    /// The channel it serves (`sms`, `email`, `webhook`, ...).
    fn channel(&self) -> &str;
    /// The provider's name in send results (`twilio`, `smtp:relay-1`, ...).
    fn provider(&self) -> &str;
    /// One attempt. Never counts a transport-level OK as accepted without
    /// reading what the provider answered.
    fn send<'a>(&'a self, delivery: &'a Delivery, attempt: u32) -> SendFuture<'a>;
}

/// Implements [`Channel`] for a provider type: its channel name, the field
/// holding its provider name, and its `async fn(&self, &Delivery) ->
/// Result<Accepted, SendError>` that makes one attempt.
///
/// ```ignore
/// notiflow_delivery::impl_channel!(TwilioChannel, "sms", name, post);
/// ```
#[macro_export]
macro_rules! impl_channel {
    ($provider:ty, $channel:literal, $($name:ident).+, $attempt:ident) => {
        impl $crate::Channel for $provider {
            fn channel(&self) -> &str {
                $channel
            }

            fn provider(&self) -> &str {
                &self.$($name).+
            }

            fn send<'a>(&'a self, delivery: &'a $crate::Delivery, _attempt: u32) -> $crate::SendFuture<'a> {
                Box::pin(self.$attempt(delivery))
            }
        }
    };
}
