//! Open relay connections, reused between messages.
//!
//! Not lettre's pool: its connections go back to the pool even when a send
//! was cut off by our deadline mid-command, so the next message would read
//! the previous one's replies. Here a connection is reused only after a send
//! that completed; anything else closes it. The pool also bounds how many
//! connections are open at once (relays limit them per client).

use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as SmtpError;
use lettre::address::Envelope;
use tokio::sync::{Mutex, Semaphore};

use crate::Security;

/// Where and how to connect.
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub tls: Option<TlsParameters>,
    pub hello: ClientId,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
}

/// Why a send did not complete.
pub enum Failure {
    Smtp(SmtpError),
    /// No reply within the deadline.
    Deadline,
    /// The relay does not offer STARTTLS although it is required.
    NoStarttls,
}

pub struct Pool {
    relay: Relay,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    slots: Semaphore,
}

/// A connection idle longer than this is checked with NOOP before reuse.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);

impl Pool {
    pub fn new(relay: Relay, size: u32) -> Self {
        Pool { relay, idle: Mutex::new(Vec::new()), slots: Semaphore::new(size.max(1) as usize) }
    }

    /// Sends one message; the deadline covers connecting, each command and the reply to DATA.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<Response, Failure> {
        let _slot = self.slots.acquire().await.expect("pool semaphore is never closed");
        let deadline = self.relay.timeout;
        let mut connection = match tokio::time::timeout(deadline, self.connection()).await {
            Ok(result) => result?,
            Err(_) => return Err(Failure::Deadline),
        };
        match tokio::time::timeout(deadline, connection.send(envelope, message)).await {
            Ok(Ok(reply)) => {
                self.idle.lock().await.push((connection, Instant::now()));
                Ok(reply)
            }
            // A refused message leaves the session mid-transaction: close it rather than RSET and hope.
            Ok(Err(error)) => {
                connection.abort().await;
                Err(Failure::Smtp(error))
            }
            Err(_) => Err(Failure::Deadline),
        }
    }

    async fn connection(&self) -> Result<AsyncSmtpConnection, Failure> {
        loop {
            let Some((mut connection, since)) = self.idle.lock().await.pop() else { break };
            if since.elapsed() < CHECK_AFTER_IDLE || connection.test_connected().await {
                return Ok(connection);
            }
            connection.abort().await;
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let relay = &self.relay;
        let wrapper = if relay.security == Security::Tls { relay.tls.clone() } else { None };
        let mut connection = AsyncSmtpConnection::connect_tokio1((relay.host.as_str(), relay.port), Some(relay.timeout), &relay.hello, wrapper, None)
            .await
            .map_err(Failure::Smtp)?;
        if relay.security == Security::Starttls {
            let tls = relay.tls.clone().expect("TLS parameters are built for starttls");
            if !connection.can_starttls() {
                connection.abort().await;
                return Err(Failure::NoStarttls);
            }
            connection.starttls(tls, &relay.hello).await.map_err(Failure::Smtp)?;
        }
        if let Some(credentials) = &relay.credentials {
            connection.auth(DEFAULT_MECHANISMS, credentials).await.map_err(Failure::Smtp)?;
        }
        Ok(connection)
    }
}
