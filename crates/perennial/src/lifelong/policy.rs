//! When the lifelong learner consolidates: a policy it owns, read from what it sees.
//!
//! Three signals, any of which makes a consolidation due:
//! * **new classes**: every `N` classes learnt since the last consolidation (the
//!   schedule of the Omniglot class stream: every 50);
//! * **unknown rate**: of the last `window` examples taught for classes already known,
//!   more than a fraction were flagged unknown just before they were learnt: the
//!   representation places new drawings of known classes far from their prototypes;
//! * **confusion**: of those examples, more than a fraction were nearer another class's
//!   prototype than their own: near-neighbour classes run together.
//!
//! Both rates are measured test-then-train on the examples the learner is taught, so
//! they need no held-out data. A consolidation resets every signal.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// A rate that triggers a consolidation once it exceeds `above` over a full window.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateTrigger {
    /// The number of most recent examples the rate is measured over.
    pub window: usize,
    /// The rate in `[0, 1)` above which a consolidation is due.
    pub above: f64,
}

/// When the learner consolidates its representation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConsolidationPolicy {
    /// Every this many classes learnt since the last consolidation (0: not by count).
    pub every_new_classes: usize,
    /// When too many taught examples of known classes were flagged unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_rate: Option<RateTrigger>,
    /// When too many taught examples of known classes were nearer another class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<RateTrigger>,
}

impl Default for ConsolidationPolicy {
    /// Every 50 new classes, as in the Omniglot class stream.
    fn default() -> Self {
        ConsolidationPolicy {
            every_new_classes: 50,
            unknown_rate: None,
            confusion: None,
        }
    }
}

impl ConsolidationPolicy {
    /// A policy that never consolidates.
    pub fn never() -> Self {
        ConsolidationPolicy {
            every_new_classes: 0,
            unknown_rate: None,
            confusion: None,
        }
    }

    /// Whether any signal can make a consolidation due.
    pub fn is_on(&self) -> bool {
        self.every_new_classes > 0 || self.unknown_rate.is_some() || self.confusion.is_some()
    }

    /// Whether the rate signals need measuring.
    pub fn watches_rates(&self) -> bool {
        self.unknown_rate.is_some() || self.confusion.is_some()
    }

    /// Checks the values once, before use.
    pub fn validate(&self) -> Result<()> {
        for (name, t) in [
            ("unknown-rate trigger", self.unknown_rate),
            ("confusion trigger", self.confusion),
        ] {
            let Some(t) = t else { continue };
            if t.window == 0 {
                return Err(Error::config(
                    name,
                    "window 0",
                    "needs at least one example",
                ));
            }
            if !(0.0..1.0).contains(&t.above) {
                return Err(Error::config(name, t.above, "the rate must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Why a consolidation is due in `state`, if it is.
    pub fn due(&self, state: &PolicyState) -> Option<Due> {
        if self.every_new_classes > 0 && state.new_classes >= self.every_new_classes {
            return Some(Due::NewClasses(state.new_classes));
        }
        let over = |t: Option<RateTrigger>, seen: &VecDeque<bool>| {
            let t = t?;
            let rate = rate(seen);
            (seen.len() >= t.window && rate > t.above).then_some(rate)
        };
        if let Some(r) = over(self.unknown_rate, &state.unknown) {
            return Some(Due::UnknownRate(r));
        }
        over(self.confusion, &state.confused).map(Due::Confusion)
    }
}

fn rate(seen: &VecDeque<bool>) -> f64 {
    if seen.is_empty() {
        return 0.0;
    }
    seen.iter().filter(|&&b| b).count() as f64 / seen.len() as f64
}

/// Why a consolidation is due.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "signal", content = "value", rename_all = "kebab-case")]
pub enum Due {
    /// This many classes were learnt since the last consolidation.
    NewClasses(usize),
    /// This fraction of recent examples of known classes was flagged unknown.
    UnknownRate(f64),
    /// This fraction of recent examples of known classes was nearer another class.
    Confusion(f64),
    /// Asked for by the caller.
    Asked,
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Due::NewClasses(n) => write!(f, "{n} new classes"),
            Due::UnknownRate(r) => write!(f, "unknown rate {:.1}%", 100.0 * r),
            Due::Confusion(r) => write!(f, "confusion {:.1}%", 100.0 * r),
            Due::Asked => write!(f, "asked"),
        }
    }
}

/// What the policy has seen since the last consolidation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyState {
    /// Classes learnt since the last consolidation.
    pub new_classes: usize,
    /// For the most recent examples of known classes: flagged unknown before learnt.
    pub unknown: VecDeque<bool>,
    /// For the same examples: nearer another class's prototype than their own.
    pub confused: VecDeque<bool>,
}

impl PolicyState {
    /// Counts a new class.
    pub fn new_class(&mut self) {
        self.new_classes += 1;
    }

    /// Records one example of a known class, keeping the last windows' worth.
    pub fn example(&mut self, policy: &ConsolidationPolicy, unknown: bool, confused: bool) {
        let push = |q: &mut VecDeque<bool>, t: Option<RateTrigger>, v: bool| {
            if let Some(t) = t {
                q.push_back(v);
                while q.len() > t.window {
                    q.pop_front();
                }
            }
        };
        push(&mut self.unknown, policy.unknown_rate, unknown);
        push(&mut self.confused, policy.confusion, confused);
    }

    /// Starts afresh (after a consolidation).
    pub fn reset(&mut self) {
        *self = PolicyState::default();
    }

    /// The recent unknown and confusion rates.
    pub fn rates(&self) -> (f64, f64) {
        (rate(&self.unknown), rate(&self.confused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_makes_a_consolidation_due() {
        let every = ConsolidationPolicy {
            every_new_classes: 3,
            ..ConsolidationPolicy::never()
        };
        let mut s = PolicyState::default();
        let mut due = Vec::new();
        for k in 1..=7 {
            s.new_class();
            if every.due(&s).is_some() {
                due.push(k);
                s.reset();
            }
        }
        assert_eq!(due, [3, 6]);
        assert!(!ConsolidationPolicy::never().is_on());
        assert_eq!(ConsolidationPolicy::never().due(&s), None);

        let rates = ConsolidationPolicy {
            every_new_classes: 0,
            unknown_rate: Some(RateTrigger {
                window: 4,
                above: 0.5,
            }),
            confusion: Some(RateTrigger {
                window: 2,
                above: 0.4,
            }),
        };
        let mut s = PolicyState::default();
        for (u, c) in [(true, false), (true, false), (true, false)] {
            s.example(&rates, u, c);
        }
        assert_eq!(rates.due(&s), None, "the window is not full");
        s.example(&rates, false, false);
        assert_eq!(rates.due(&s), Some(Due::UnknownRate(0.75)));
        assert_eq!(s.unknown.len(), 4);
        assert_eq!(s.confused.len(), 2, "each signal keeps its own window");
        s.reset();
        s.example(&rates, false, true);
        s.example(&rates, false, false);
        assert_eq!(rates.due(&s), Some(Due::Confusion(0.5)));
        assert!(rates.validate().is_ok());
        let bad = ConsolidationPolicy {
            confusion: Some(RateTrigger {
                window: 0,
                above: 0.1,
            }),
            ..rates
        };
        assert!(bad.validate().is_err());
        let bad = ConsolidationPolicy {
            unknown_rate: Some(RateTrigger {
                window: 3,
                above: 1.0,
            }),
            ..rates
        };
        assert!(bad.validate().is_err());
        assert_eq!(Due::NewClasses(50).to_string(), "50 new classes");
    }
}
