//! The summary block a run prints last, in the original's format plus lines of our own, and its parser.

use std::fmt;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub val_bpb: f64,
    pub training_seconds: f64,
    pub total_seconds: f64,
    pub peak_vram_mb: f64,
    /// None where the device's peak is unknown (and on the CPU): printed `n/a`.
    pub mfu_percent: Option<f64>,
    pub total_tokens_m: f64,
    pub num_steps: u64,
    pub num_params_m: f64,
    pub depth: u64,
    // Ours, after the original's lines: what the run is comparable with.
    pub profile: String,
    pub time_budget: f64,
    pub device: String,
    pub seed: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mfu = self.mfu_percent.map_or("n/a".to_string(), |m| format!("{m:.2}"));
        writeln!(f, "---")?;
        writeln!(f, "val_bpb:          {:.6}", self.val_bpb)?;
        writeln!(f, "training_seconds: {:.1}", self.training_seconds)?;
        writeln!(f, "total_seconds:    {:.1}", self.total_seconds)?;
        writeln!(f, "peak_vram_mb:     {:.1}", self.peak_vram_mb)?;
        writeln!(f, "mfu_percent:      {mfu}")?;
        writeln!(f, "total_tokens_M:   {:.1}", self.total_tokens_m)?;
        writeln!(f, "num_steps:        {}", self.num_steps)?;
        writeln!(f, "num_params_M:     {:.1}", self.num_params_m)?;
        writeln!(f, "depth:            {}", self.depth)?;
        writeln!(f, "profile:          {}", self.profile)?;
        writeln!(f, "time_budget:      {}", self.time_budget)?;
        writeln!(f, "device:           {}", self.device)?;
        write!(f, "seed:             {}", self.seed)
    }
}

impl Summary {
    /// Reads the last summary block of a run's output.
    pub fn parse(log: &str) -> Result<Summary> {
        let Some(start) = log.rfind("\n---\n").map(|i| i + 1).or_else(|| log.starts_with("---\n").then_some(0)) else {
            bail!("no summary block (a line `---` followed by `val_bpb: ...`)");
        };
        let mut fields = std::collections::HashMap::new();
        for line in log[start..].lines().skip(1) {
            let Some((key, value)) = line.split_once(':') else { break };
            fields.insert(key.trim(), value.trim());
        }
        let text = |k: &str| fields.get(k).copied().with_context(|| format!("the summary has no `{k}:` line"));
        let num = |k: &str| -> Result<f64> {
            let v = text(k)?;
            v.parse::<f64>().with_context(|| format!("summary `{k}: {v}` is not a number"))
        };
        let int = |k: &str| -> Result<u64> {
            let v = text(k)?;
            v.parse::<u64>().with_context(|| format!("summary `{k}: {v}` is not a whole number"))
        };
        Ok(Summary {
            val_bpb: num("val_bpb")?,
            training_seconds: num("training_seconds")?,
            total_seconds: num("total_seconds")?,
            peak_vram_mb: num("peak_vram_mb")?,
            mfu_percent: match text("mfu_percent")? {
                "n/a" => None,
                _ => Some(num("mfu_percent")?),
            },
            total_tokens_m: num("total_tokens_M")?,
            num_steps: int("num_steps")?,
            num_params_m: num("num_params_M")?,
            depth: int("depth")?,
            profile: text("profile")?.to_string(),
            time_budget: num("time_budget")?,
            device: text("device")?.to_string(),
            seed: int("seed")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Summary {
        Summary {
            val_bpb: 0.9979,
            training_seconds: 300.1,
            total_seconds: 325.9,
            peak_vram_mb: 45060.2,
            mfu_percent: Some(39.8),
            total_tokens_m: 499.6,
            num_steps: 953,
            num_params_m: 50.3,
            depth: 8,
            profile: "h100".into(),
            time_budget: 300.0,
            device: "NVIDIA H100 80GB HBM3".into(),
            seed: 42,
        }
    }

    #[test]
    fn prints_the_original_block_then_ours() {
        let text = example().to_string();
        let original = "---\nval_bpb:          0.997900\ntraining_seconds: 300.1\ntotal_seconds:    325.9\n\
                        peak_vram_mb:     45060.2\nmfu_percent:      39.80\ntotal_tokens_M:   499.6\n\
                        num_steps:        953\nnum_params_M:     50.3\ndepth:            8\n";
        assert!(text.starts_with(original), "{text}");
        assert!(text.ends_with("profile:          h100\ntime_budget:      300\ndevice:           NVIDIA H100 80GB HBM3\nseed:             42"));
    }

    #[test]
    fn parses_the_last_block_of_a_log() {
        let mut s = example();
        s.mfu_percent = None;
        let log = format!("step 1 loss 3.2\n---\nval_bpb: 9.0\n\nmore output\n{s}\n");
        assert_eq!(Summary::parse(&log).unwrap(), s);
        assert!(Summary::parse("no block here").is_err());
        let broken = s.to_string().replace("num_steps:        953", "num_steps:        many");
        assert!(Summary::parse(&broken).unwrap_err().to_string().contains("num_steps"));
    }
}
