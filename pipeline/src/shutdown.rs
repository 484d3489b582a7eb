//! The stop request of every long-running command: SIGINT (Ctrl-C) or SIGTERM,
//! which `docker stop`, systemd and Kubernetes send before they kill. Either
//! one lets the command finish its work in hand, make it durable and exit 0.

/// Resolves when the process is asked to stop.
pub async fn requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A flag raised when the process is asked to stop (for loops that look at it between steps).
pub fn flag() -> tokio::sync::watch::Receiver<bool> {
    let (raise, flag) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        requested().await;
        raise.send_replace(true);
    });
    flag
}

/// Bounds how long stopping may take: once a stop is requested, the process
/// exits with code 1 after `deadline` if it has not exited by then. Safe
/// because nothing is committed before its outputs are durable: what is cut
/// short is redone after the restart.
pub fn bound(deadline: std::time::Duration) {
    tokio::spawn(async move {
        requested().await;
        tokio::time::sleep(deadline).await;
        tracing::error!(deadline_ms = deadline.as_millis() as u64, "stop deadline ([shutdown] deadline_ms) passed: exiting with work unfinished; it is redone after the restart");
        eprintln!("notiflow: stop deadline of {} ms passed; exiting with work unfinished (redone after the restart)", deadline.as_millis());
        std::process::exit(1);
    });
}
