//! Email channel: each delivery becomes one MIME message (text, or
//! multipart/alternative text + HTML when the template has HTML) sent through
//! an SMTP relay over pooled connections. The relay's reply decides the
//! outcome: 250 after DATA is acceptance; 4xx replies, dropped connections and
//! timeouts are retried; 5xx replies fail at once, read by their enhanced
//! status code (5.1.x bad mailbox, 5.7.x policy) into a normalized reason.

mod config;
mod pool;
mod request;
mod service;

#[cfg(feature = "fake")]
pub mod fake;

pub use config::{Security, SmtpConfig};
pub use request::MessageBuilder;
pub use service::SmtpChannel;
