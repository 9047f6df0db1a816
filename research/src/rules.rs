//! Keep decisions, for a metric where lower or higher is better ([`Goal`]): `lower` (the original's name: any
//! improvement, whichever way is better), `margin` (beat the best by more than z·σ; the default) and `confirm N`
//! (an improvement is rerun with N other seeds and kept only if the mean still beats the best by the margin). σ is
//! the seed-to-seed spread of the metric: measured by `autoresearch noise`, or by the session itself under
//! `margin` (the baseline trained on [`BASELINE_SEEDS`] seeds before the first comparison). A training whose value
//! is the same for every seed has no measurable spread, and is refused.

use std::path::Path;

use anyhow::{bail, Context, Result};

// The spread's measurements and noise.json live with results.tsv's format in autoresearch-report (the report
// reads them too); the loop uses them by these names.
pub(crate) use autoresearch_report::noise::{mean_std, noise_for, save_noise, seed_blind, NoiseEstimate};

use crate::metric::Goal;

#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    Lower,
    Margin { z: f64 },
    Confirm { n: usize, z: f64 },
}

/// The rule of a new session unless told otherwise: only a gain beyond the seed-to-seed noise is kept.
pub const DEFAULT_RULE: &str = "margin";
/// Under `margin` with no spread measured, the baseline is trained on this many seeds first.
pub const BASELINE_SEEDS: usize = 3;

impl Rule {
    /// Parses `lower`, `margin`, or `confirm N` (also `confirm:N`).
    pub fn parse(text: &str, z: f64) -> Result<Rule> {
        let words: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == ':').filter(|w| !w.is_empty()).collect();
        Ok(match words.as_slice() {
            ["lower"] => Rule::Lower,
            ["margin"] => Rule::Margin { z },
            ["confirm", n] => {
                let n: usize = n
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .with_context(|| format!("confirm {n:?}: give a number of reruns ≥ 1"))?;
                Rule::Confirm { n, z }
            }
            _ => bail!("unknown keep rule {text:?}: use `lower`, `margin` or `confirm N`"),
        })
    }
}

/// A rule with its margin resolved for one profile and budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Decider {
    pub rule: Rule,
    /// How much a result must beat the best by.
    pub margin: f64,
    /// The rule as results.tsv records it.
    pub label: String,
    /// `margin` with no spread measured yet: the session measures it on the baseline (see
    /// [`crate::experiment::remeasure_if_needed`]) before anything is compared.
    pub awaiting_noise: bool,
    /// Which way the metric is better.
    pub goal: Goal,
}

impl Decider {
    /// σ from `noise`, or `min_delta` as the margin itself; `margin` needs one of them.
    pub fn new(rule: Rule, goal: Goal, noise: Option<&NoiseEstimate>, min_delta: Option<f64>) -> Result<Decider> {
        let resolve = |z: f64| -> Option<(f64, String)> {
            match (min_delta, noise) {
                (Some(d), _) => Some((d, format!("min-delta {d}"))),
                (None, Some(n)) => {
                    Some((z * n.std, format!("{z}σ = {:.6} (σ from {} seeds)", z * n.std, n.values.len())))
                }
                (None, None) => None,
            }
        };
        Ok(match rule {
            Rule::Lower => Decider { rule, margin: 0.0, label: "lower".into(), awaiting_noise: false, goal },
            Rule::Margin { z } => match resolve(z) {
                Some((margin, text)) => {
                    Decider { rule, margin, label: format!("margin {text}"), awaiting_noise: false, goal }
                }
                None => Decider {
                    rule,
                    margin: 0.0,
                    label: format!("margin {z}σ (σ not measured yet: from the baseline on {BASELINE_SEEDS} seeds)"),
                    awaiting_noise: true,
                    goal,
                },
            },
            Rule::Confirm { n, z } => {
                let (margin, text) = resolve(z).unwrap_or((0.0, "no margin (no noise estimate)".into()));
                Decider { rule, margin, label: format!("confirm {n}, {text}"), awaiting_noise: false, goal }
            }
        })
    }

    /// z of the margin z·σ (0 for `lower`).
    pub fn z(&self) -> f64 {
        match self.rule {
            Rule::Lower => 0.0,
            Rule::Margin { z } | Rule::Confirm { z, .. } => z,
        }
    }

    /// This decider, with the spread that the session has measured meanwhile where it was awaiting one.
    pub fn resolved(&self, dir: &Path, profile: &str, budget: f64) -> Result<Decider> {
        if !self.awaiting_noise {
            return Ok(self.clone());
        }
        match noise_for(dir, profile, budget)? {
            Some(noise) => Decider::new(self.rule.clone(), self.goal, Some(&noise), None),
            None => Ok(self.clone()),
        }
    }

    /// Whether a first result deserves a place (or, for `confirm`, reruns): with the best's value.
    pub fn promising(&self, value: f64, best: f64) -> bool {
        match self.rule {
            Rule::Confirm { .. } | Rule::Lower => self.goal.better(value, best),
            Rule::Margin { .. } => self.goal.gain(value, best) > self.margin,
        }
    }

    /// The final verdict on a value (a single result, or the mean of a confirmed one) against the `best` of run
    /// `best_run` (`what` it is: the session's best, or under the frontier search the node it started from) and
    /// its reason.
    pub fn verdict(&self, value: f64, best: f64, best_run: u64, what: &str) -> (bool, String) {
        let gain = self.goal.gain(value, best);
        let keep = if self.margin > 0.0 { gain > self.margin } else { gain > 0.0 };
        let cmp = if keep { ">" } else { "≤" };
        let reason = if self.margin > 0.0 {
            format!("gain {gain:.6} over {what} {best:.6} (run {best_run}) {cmp} margin {:.6}", self.margin)
        } else {
            format!("gain {gain:.6} over {what} {best:.6} (run {best_run}) {cmp} 0")
        };
        (keep, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_margins() {
        assert_eq!(Rule::parse("confirm 2", 2.0).unwrap(), Rule::Confirm { n: 2, z: 2.0 });
        assert!(Rule::parse("confirm zero", 2.0).is_err());
        assert!(Rule::parse("sometimes", 2.0).is_err());
        let noise = NoiseEstimate::new("small", 10.0, "abc", vec![43, 44, 45], vec![1.0, 1.1, 1.2]).unwrap();
        assert!((noise.std - 0.1).abs() < 1e-12 && (noise.mean - 1.1).abs() < 1e-12);
        let d = Decider::new(Rule::Margin { z: 2.0 }, Goal::Lower, Some(&noise), None).unwrap();
        assert!((d.margin - 0.2).abs() < 1e-12);
        assert!(!d.verdict(0.9, 1.0, 1, "best").0, "a gain of 0.1 is within 2σ = 0.2");
        assert!(d.verdict(0.7, 1.0, 1, "best").0);
        let awaiting = Decider::new(Rule::Margin { z: 2.0 }, Goal::Lower, None, None).unwrap();
        assert!(awaiting.awaiting_noise && awaiting.label.contains("σ not measured yet"), "{}", awaiting.label);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(awaiting.resolved(dir.path(), "small", 10.0).unwrap(), awaiting, "nothing measured yet");
        save_noise(dir.path(), &noise).unwrap();
        let measured = awaiting.resolved(dir.path(), "small", 10.0).unwrap();
        assert!(!measured.awaiting_noise && (measured.margin - 0.2).abs() < 1e-12, "{measured:?}");
        assert!(measured.label.starts_with("margin 2σ = 0.200000 (σ from 3 seeds)"), "{}", measured.label);
        assert_eq!(awaiting.resolved(dir.path(), "small", 60.0).unwrap(), awaiting, "another budget's spread");
        let d = Decider::new(Rule::Margin { z: 2.0 }, Goal::Lower, Some(&noise), Some(0.05)).unwrap();
        assert_eq!(d.margin, 0.05, "--min-delta wins");
        let lower = Decider::new(Rule::Lower, Goal::Lower, None, None).unwrap();
        assert!(lower.verdict(0.999, 1.0, 1, "best").0 && !lower.verdict(1.0, 1.0, 1, "best").0);
        // Where higher is better (accuracy), a gain is a rise.
        let higher = Decider::new(Rule::Margin { z: 2.0 }, Goal::Higher, Some(&noise), None).unwrap();
        assert!(
            higher.verdict(1.3, 1.0, 1, "best").0
                && !higher.verdict(1.1, 1.0, 1, "best").0
                && !higher.verdict(0.7, 1.0, 1, "best").0
        );
        assert!(higher.promising(1.3, 1.0) && !higher.promising(0.7, 1.0));
        let (_, why) = higher.verdict(1.3, 1.0, 1, "best");
        assert!(why.starts_with("gain 0.300000 over best 1.000000"), "{why}");
    }
}
