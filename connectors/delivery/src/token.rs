//! Access tokens that providers hand out for a while (WeChat, FCM OAuth,
//! APNs provider tokens): fetched once, shared by every send, refreshed
//! before they expire, and dropped at once when the provider says it is stale.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::{Secret, SendError};

#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<(Secret, Instant)>>,
}

impl TokenCache {
    /// The cached token, or a fresh one from `fetch` (which answers the token
    /// and how long it lives). One fetch at a time: concurrent sends wait for it.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, SendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), SendError>>,
    {
        let mut current = self.current.lock().await;
        if let Some((token, refresh_at)) = current.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch().await?;
        // Refresh when a tenth of the lifetime (at most 5 minutes) is left, so no send carries a token about to lapse.
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        *current = Some((token.clone(), Instant::now() + lifetime.saturating_sub(margin)));
        Ok(token)
    }

    /// The provider refused `stale`: forget it (unless another send already replaced it).
    pub async fn invalidate(&self, stale: &Secret) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(token, _)| token == stale) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn fetches_once_refreshes_before_expiry_and_after_invalidation() {
        let cache = TokenCache::default();
        let fetches = AtomicU32::new(0);
        let fetch = |lifetime: Duration| {
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok((Secret::new(format!("t{n}")), lifetime)) }
        };
        let first = cache.get(|| fetch(Duration::from_secs(7200))).await.unwrap();
        let again = cache.get(|| fetch(Duration::from_secs(7200))).await.unwrap();
        assert_eq!((first.expose(), again.expose()), ("t1", "t1"));
        cache.invalidate(&Secret::new("t0")).await;
        assert_eq!(cache.get(|| fetch(Duration::from_secs(7200))).await.unwrap().expose(), "t1", "an older token does not drop the current one");
        cache.invalidate(&first).await;
        assert_eq!(cache.get(|| fetch(Duration::from_millis(50))).await.unwrap().expose(), "t2");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get(|| fetch(Duration::from_secs(7200))).await.unwrap().expose(), "t3", "expired: fetched again");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }
}
