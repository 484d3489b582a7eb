//! Several copies of a job in one process, each on its own OS thread with its
//! own single-threaded runtime: members of one consumer group that share the
//! partitions (and so the cores) as separate instances would, without a
//! process each. A member's state, checkpoints and commits are its own
//! partitions', exactly as between instances (docs/exactly-once.md).

use std::future::Future;

use tokio::sync::watch;

/// Runs `job(member)` for each of `members` on its own thread and returns
/// their results in member order. When one member fails, `stop` is raised so
/// the others finish their batch and stop; the first error is returned.
pub fn on_threads<T, F, Fut>(members: usize, name: &str, stop: &watch::Sender<bool>, job: F) -> anyhow::Result<Vec<T>>
where
    T: Send,
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let outcomes: Vec<anyhow::Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..members.max(1))
            .map(|member| {
                let job = &job;
                std::thread::Builder::new().name(format!("{name}-{member}")).spawn_scoped(scope, move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    let outcome = runtime.block_on(job(member));
                    if outcome.is_err() {
                        stop.send_replace(true);
                    }
                    outcome
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(member, handle)| match handle {
                Err(err) => Err(anyhow::anyhow!("cannot start {name} member {member}: {err}")),
                Ok(handle) => handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("{name} member {member} panicked"))),
            })
            .collect()
    });
    outcomes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_run_on_their_own_threads_and_a_failure_stops_the_rest() {
        let (stop, watching) = watch::channel(false);
        let names = on_threads(3, "w", &stop, |member| async move {
            Ok((member, std::thread::current().name().map(str::to_string)))
        })
        .unwrap();
        assert_eq!(names, vec![(0, Some("w-0".into())), (1, Some("w-1".into())), (2, Some("w-2".into()))]);
        assert!(!*watching.borrow(), "no failure, no stop");

        // Member 1 fails; member 0 runs until it is told to stop.
        let result = on_threads(2, "w", &stop, |member| {
            let mut stopped = watching.clone();
            async move {
                if member == 1 {
                    anyhow::bail!("member 1 failed");
                }
                stopped.wait_for(|s| *s).await?;
                Ok(())
            }
        });
        assert_eq!(result.unwrap_err().to_string(), "member 1 failed");
    }
}
