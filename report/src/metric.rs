//! What a session measures: the metric's name and whether lower or higher is better. The built-in GPT's is
//! `val_bpb`, lower; a project of the user's own names its own in `autoresearch.toml`. results.tsv keeps the
//! original's column name `val_bpb` for every metric (its format is the original's); what the value is, the
//! session's state says.

use serde::{Deserialize, Serialize};

/// Which way is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    #[default]
    Lower,
    Higher,
}

impl Goal {
    /// How much `value` improves on `reference`: positive when it is better.
    pub fn gain(self, value: f64, reference: f64) -> f64 {
        match self {
            Goal::Lower => reference - value,
            Goal::Higher => value - reference,
        }
    }

    /// Whether `value` is strictly better than `reference`.
    pub fn better(self, value: f64, reference: f64) -> bool {
        self.gain(value, reference) > 0.0
    }

    pub fn phrase(self) -> &'static str {
        match self {
            Goal::Lower => "lower is better",
            Goal::Higher => "higher is better",
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Goal::Lower => "lower",
            Goal::Higher => "higher",
        })
    }
}

/// The session's metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub goal: Goal,
}

impl Default for Metric {
    /// The built-in GPT's (and every session's from before projects).
    fn default() -> Metric {
        Metric { name: "val_bpb".into(), goal: Goal::Lower }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gains_are_positive_when_better_either_way() {
        assert!((Goal::Lower.gain(0.9, 1.0) - 0.1).abs() < 1e-12);
        assert!((Goal::Higher.gain(0.9, 1.0) + 0.1).abs() < 1e-12);
        assert!(Goal::Higher.better(0.95, 0.9) && !Goal::Higher.better(0.9, 0.9) && !Goal::Lower.better(0.95, 0.9));
        let m: Metric = serde_json::from_str(r#"{"name":"accuracy","goal":"higher"}"#).unwrap();
        assert_eq!(m, Metric { name: "accuracy".into(), goal: Goal::Higher });
        assert_eq!(Metric::default().name, "val_bpb");
    }
}
