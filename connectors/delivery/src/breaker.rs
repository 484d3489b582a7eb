//! A circuit breaker per provider: after a run of provider-level failures the
//! provider is left alone for a while, then one probe decides whether it is
//! back. Keeps a dead provider from costing every delivery a timeout.

use std::time::{Duration, Instant};

/// When a provider is taken out of rotation and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive provider-level failures (timeouts, 5xx, refused
    /// connections, refused credentials) that open the circuit.
    pub failures_to_open: u32,
    /// How long the first opening lasts; doubled after each failed probe.
    pub open_for: Duration,
    /// The longest an opening lasts.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failures_to_open: 5, open_for: Duration::from_secs(2), max_open_for: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    /// One probe is out; everyone else waits for its answer.
    Probing { open_for: Duration },
}

/// Whether a provider takes a send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Yes,
    /// Yes, as the probe of an open circuit.
    Probe,
    /// Not before this instant.
    NotUntil(Instant),
}

/// How long others wait while a probe is out.
const PROBE_PATIENCE: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker { config, state: State::Closed { failures: 0 } }
    }

    /// Would it admit a send now? (Does not change the state.)
    pub fn peek(&self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Yes,
            State::Open { until, .. } if now >= until => Admission::Probe,
            State::Open { until, .. } => Admission::NotUntil(until),
            State::Probing { .. } => Admission::NotUntil(now + PROBE_PATIENCE),
        }
    }

    /// Admits a send now if it can; an open circuit past its time lets one probe out.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let admission = self.peek(now);
        if admission == Admission::Probe
            && let State::Open { open_for, .. } = self.state
        {
            self.state = State::Probing { open_for };
        }
        admission
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A provider-level failure. Returns true when it opened the circuit.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { failures } if failures + 1 >= self.config.failures_to_open => {
                self.state = State::Open { until: now + self.config.open_for, open_for: self.config.open_for };
                true
            }
            State::Closed { failures } => {
                self.state = State::Closed { failures: failures + 1 };
                false
            }
            State::Probing { open_for } => {
                let open_for = (open_for * 2).min(self.config.max_open_for);
                self.state = State::Open { until: now + open_for, open_for };
                true
            }
            // Answers of sends admitted before it opened.
            State::Open { .. } => false,
        }
    }

    /// 0 closed, 1 open, 2 probing (the `notiflow_provider_circuit` gauge).
    pub fn gauge(&self) -> f64 {
        match self.state {
            State::Closed { .. } => 0.0,
            State::Open { .. } => 1.0,
            State::Probing { .. } => 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failures_to_open: 3, open_for: Duration::from_secs(1), max_open_for: Duration::from_secs(3) })
    }

    #[test]
    fn opens_after_a_run_of_failures_and_a_success_resets_the_run() {
        let now = Instant::now();
        let mut b = breaker();
        assert!(!b.on_failure(now) && !b.on_failure(now));
        b.on_success();
        assert!(!b.on_failure(now) && !b.on_failure(now));
        assert!(b.on_failure(now), "third consecutive failure opens");
        assert_eq!(b.admit(now), Admission::NotUntil(now + Duration::from_secs(1)));
    }

    #[test]
    fn one_probe_after_the_opening_and_its_answer_decides() {
        let now = Instant::now();
        let mut b = breaker();
        (0..3).for_each(|_| _ = b.on_failure(now));
        let later = now + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(matches!(b.admit(later), Admission::NotUntil(_)), "only one probe at a time");
        // A failed probe opens it again for twice as long, capped.
        assert!(b.on_failure(later));
        assert_eq!(b.peek(later), Admission::NotUntil(later + Duration::from_secs(2)));
        let again = later + Duration::from_secs(2);
        assert_eq!(b.admit(again), Admission::Probe);
        b.on_failure(again);
        assert_eq!(b.peek(again), Admission::NotUntil(again + Duration::from_secs(3)));
        let back = again + Duration::from_secs(3);
        assert_eq!(b.admit(back), Admission::Probe);
        b.on_success();
        assert_eq!(b.admit(back), Admission::Yes);
    }
}
