//! `notiflow stand-ins`: local stand-ins for the providers configured under
//! `[delivery]`, so a stack delivers end to end with no real accounts (the
//! compose profile `stand-ins`, the stack test). Each stand-in listens on the
//! port of its provider's endpoint, expects the provider's own credentials
//! (read from the same secrets) and checks requests as the real API does; a
//! Twilio stand-in posts signed status callbacks as Twilio would. Every
//! message it accepts or refuses is printed, one line each.

use std::time::Duration;

use anyhow::{Context, bail};
use notiflow_delivery::fake::FakeProvider;
use notiflow_email::fake::FakeSmtp;

use crate::config::Config;
use crate::deliver::config::ProviderConfig;

/// A running stand-in and what it already printed.
enum StandIn {
    Http { name: String, fake: FakeProvider, printed: (usize, usize) },
    Smtp { name: String, fake: FakeSmtp, printed: (usize, usize) },
}

impl StandIn {
    /// Lines for what was accepted or refused since the last call.
    fn news(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        match self {
            StandIn::Http { name, fake, printed } => {
                let log = fake.log();
                lines.extend(log.accepted[printed.0..].iter().map(|m| format!("{name}: accepted {} for {}", m.provider_id, m.to)));
                lines.extend(log.refused[printed.1..].iter().map(|why| format!("{name}: refused: {why}")));
                *printed = (log.accepted.len(), log.refused.len());
            }
            StandIn::Smtp { name, fake, printed } => {
                let log = fake.log();
                lines.extend(log.accepted[printed.0..].iter().map(|m| format!("{name}: accepted {} for {}", m.queue_id, m.envelope_to)));
                lines.extend(log.refused[printed.1..].iter().map(|why| format!("{name}: refused: {why}")));
                *printed = (log.accepted.len(), log.refused.len());
            }
        }
        lines
    }
}

/// The port a provider endpoint URL names (its scheme's default if none).
fn endpoint_port(endpoint: &str) -> anyhow::Result<u16> {
    let url = url::Url::parse(endpoint).with_context(|| format!("endpoint {endpoint:?}"))?;
    url.port_or_known_default().with_context(|| format!("endpoint {endpoint:?} has no port"))
}

/// Starts the stand-in for one provider on `host`, or says why it has none.
async fn start(provider: &ProviderConfig, host: &str) -> anyhow::Result<Result<(StandIn, String), String>> {
    let name = provider.name.clone();
    let secret = |what: &str, secret: &notiflow_delivery::SecretRef| secret.resolve().map_err(|e| anyhow::anyhow!("provider {name}: {what}: {e}"));
    if let Some(twilio) = &provider.twilio {
        let bind = format!("{host}:{}", endpoint_port(&twilio.endpoint)?);
        let token = secret("auth_token", &twilio.auth_token)?;
        let fake = notiflow_sms::fake::twilio_on(&bind, &twilio.account_sid, token.expose()).await.with_context(|| format!("stand-in {name}: listen on {bind}"))?;
        return Ok(Ok((StandIn::Http { name: name.clone(), fake, printed: (0, 0) }, format!("{name} (twilio) on {bind}"))));
    }
    if let Some(smtp) = &provider.smtp {
        let (Some(user), Some(password)) = (&smtp.username, &smtp.password) else {
            return Ok(Err(format!("{name}: the SMTP stand-in needs username and password (it refuses mail before AUTH)")));
        };
        if smtp.security != notiflow_email::Security::None {
            return Ok(Err(format!("{name}: the SMTP stand-in speaks plain SMTP only (security = \"none\")")));
        }
        let bind = format!("{host}:{}", smtp.port.unwrap_or(25));
        let password = secret("password", password)?;
        let fake = FakeSmtp::start_on(&bind, user, password.expose()).await.with_context(|| format!("stand-in {name}: listen on {bind}"))?;
        return Ok(Ok((StandIn::Smtp { name: name.clone(), fake, printed: (0, 0) }, format!("{name} (smtp) on {bind}"))));
    }
    Ok(Err(format!("{name}: no stand-in for this provider kind (stand-ins: twilio, smtp)")))
}

/// Serves a stand-in for every configured provider that has one, on `host`, until SIGTERM/SIGINT.
pub async fn serve(config: &Config, host: &str) -> anyhow::Result<()> {
    let mut running = Vec::new();
    let (mut serving, mut skipped) = (Vec::new(), Vec::new());
    for provider in &config.delivery.providers {
        match start(provider, host).await? {
            Ok((stand_in, line)) => {
                running.push(stand_in);
                serving.push(line);
            }
            Err(why) => skipped.push(why),
        }
    }
    if running.is_empty() {
        bail!("no provider under [delivery] has a stand-in: {}", skipped.join("; "));
    }
    println!("stand-ins: serving {}", serving.join(", "));
    for why in skipped {
        println!("stand-ins: skipped {why}");
    }
    crate::metrics_http::mark_ready();
    let stop = crate::shutdown::requested();
    tokio::pin!(stop);
    loop {
        for line in running.iter_mut().flat_map(StandIn::news) {
            println!("{line}");
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_listen_on_the_port_their_provider_endpoint_names() {
        assert_eq!(endpoint_port("http://stand-ins:8081").unwrap(), 8081);
        assert_eq!(endpoint_port("https://api.twilio.com").unwrap(), 443);
        assert!(endpoint_port("not a url").is_err());
    }
}
