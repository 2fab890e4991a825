//! Self-healing as a pure policy: when a generation has panicked too often, and which
//! generation serves instead. Time is passed in, so the tests use a fake clock.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// When a generation counts as broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanicPolicy {
    /// This many panics within `window` roll the generation back (0: never).
    pub max_panics: u32,
    /// The window the panics are counted in.
    pub window: Duration,
}

impl Default for PanicPolicy {
    /// 5 panics within 10 seconds.
    fn default() -> Self {
        PanicPolicy {
            max_panics: 5,
            window: Duration::from_secs(10),
        }
    }
}

/// Which generations exist, which serves, which are broken, and the recent panics of
/// the serving one.
#[derive(Debug, Default)]
pub struct Healer {
    policy: PanicPolicy,
    /// Generations loaded, in load order.
    loaded: Vec<u64>,
    current: Option<u64>,
    bad: BTreeSet<u64>,
    panics: VecDeque<Instant>,
}

/// What a panic leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving the current generation; `count` panics in the window.
    Keep {
        /// Panics counted in the window, this one included.
        count: u32,
    },
    /// Serve `to` instead of `from`, which panicked `count` times in the window.
    RollBack {
        /// The broken generation.
        from: u64,
        /// The generation to serve.
        to: u64,
        /// Its panics in the window.
        count: u32,
    },
    /// The panic was in a generation that no longer serves: nothing to do.
    Stale,
}

impl Healer {
    /// A healer with this policy; nothing loaded.
    pub fn new(policy: PanicPolicy) -> Self {
        Healer {
            policy,
            ..Healer::default()
        }
    }

    /// Change the policy (heph sends its configuration after the program starts).
    pub fn set_policy(&mut self, policy: PanicPolicy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> PanicPolicy {
        self.policy
    }

    /// The serving generation.
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    /// `generation` was loaded and now serves.
    pub fn loaded(&mut self, generation: u64) {
        self.loaded.retain(|g| *g != generation);
        self.loaded.push(generation);
        self.current = Some(generation);
        self.panics.clear();
    }

    /// A call in `generation` panicked at `now`.
    pub fn panicked(&mut self, generation: u64, now: Instant) -> Verdict {
        if self.current != Some(generation) {
            return Verdict::Stale;
        }
        self.panics.push_back(now);
        while let Some(first) = self.panics.front() {
            if now.saturating_duration_since(*first) >= self.policy.window {
                self.panics.pop_front();
            } else {
                break;
            }
        }
        let count = u32::try_from(self.panics.len()).unwrap_or(u32::MAX);
        if self.policy.max_panics == 0 || count < self.policy.max_panics {
            return Verdict::Keep { count };
        }
        // The newest generation loaded before this one that is not broken.
        let to = self
            .loaded
            .iter()
            .rev()
            .skip_while(|g| **g != generation)
            .skip(1)
            .find(|g| !self.bad.contains(g))
            .copied();
        match to {
            Some(to) => {
                self.bad.insert(generation);
                self.current = Some(to);
                self.panics.clear();
                Verdict::RollBack {
                    from: generation,
                    to,
                    count,
                }
            }
            // Nothing to go back to: keep counting.
            None => Verdict::Keep { count },
        }
    }

    /// Is `generation` known to be broken?
    pub fn is_bad(&self, generation: u64) -> bool {
        self.bad.contains(&generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn the_fifth_panic_in_the_window_rolls_back_to_the_previous_generation() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy::default());
        h.loaded(1);
        h.loaded(2);
        assert_eq!(h.current(), Some(2));
        assert!(!h.is_bad(1) && !h.is_bad(2));
        for n in 1..=4 {
            assert_eq!(
                h.panicked(2, at(t, n * 100)),
                Verdict::Keep { count: n as u32 }
            );
        }
        assert_eq!(
            h.panicked(2, at(t, 500)),
            Verdict::RollBack {
                from: 2,
                to: 1,
                count: 5
            }
        );
        assert_eq!(h.current(), Some(1));
        assert!(h.is_bad(2));
        // A late panic of the broken generation changes nothing.
        assert_eq!(h.panicked(2, at(t, 600)), Verdict::Stale);
    }

    #[test]
    fn panics_older_than_the_window_do_not_count() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy {
            max_panics: 3,
            window: Duration::from_secs(1),
        });
        h.loaded(1);
        h.loaded(2);
        assert_eq!(h.panicked(2, at(t, 0)), Verdict::Keep { count: 1 });
        assert_eq!(h.panicked(2, at(t, 900)), Verdict::Keep { count: 2 });
        // The first one is now 1 s old: out of the window.
        assert_eq!(h.panicked(2, at(t, 1000)), Verdict::Keep { count: 2 });
        assert!(matches!(
            h.panicked(2, at(t, 1100)),
            Verdict::RollBack { to: 1, .. }
        ));
    }

    #[test]
    fn a_rollback_skips_broken_generations_and_the_first_has_nowhere_to_go() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy {
            max_panics: 1,
            window: Duration::from_secs(10),
        });
        h.loaded(1);
        assert_eq!(h.panicked(1, t), Verdict::Keep { count: 1 });
        h.loaded(2);
        assert!(matches!(h.panicked(2, t), Verdict::RollBack { to: 1, .. }));
        h.loaded(3);
        // 2 is broken: 3 goes back to 1.
        assert_eq!(
            h.panicked(3, t),
            Verdict::RollBack {
                from: 3,
                to: 1,
                count: 1
            }
        );
    }

    #[test]
    fn a_new_policy_applies_to_the_next_panic() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy::default());
        assert_eq!(h.policy(), PanicPolicy::default());
        let strict = PanicPolicy {
            max_panics: 1,
            window: Duration::from_secs(1),
        };
        h.set_policy(strict);
        assert_eq!(h.policy(), strict);
        h.loaded(1);
        h.loaded(2);
        assert!(matches!(h.panicked(2, t), Verdict::RollBack { to: 1, .. }));
    }

    #[test]
    fn zero_max_panics_never_rolls_back() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy {
            max_panics: 0,
            window: Duration::from_secs(10),
        });
        h.loaded(1);
        h.loaded(2);
        for n in 1..=20 {
            assert_eq!(h.panicked(2, t), Verdict::Keep { count: n });
        }
    }

    #[test]
    fn loading_resets_the_panic_count() {
        let t = Instant::now();
        let mut h = Healer::new(PanicPolicy {
            max_panics: 2,
            window: Duration::from_secs(10),
        });
        h.loaded(1);
        h.loaded(2);
        assert_eq!(h.panicked(2, t), Verdict::Keep { count: 1 });
        h.loaded(3);
        assert_eq!(h.panicked(3, t), Verdict::Keep { count: 1 });
    }
}
