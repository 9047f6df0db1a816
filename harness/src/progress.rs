//! A training's progress, for whoever watches (the dashboard): the training file calls
//! [`crate::profile::Training::progress`] after each step with the step and its smoothed loss; fixed code adds the
//! clock's side (the fraction of the training's time gone, the seconds left) and writes [`Progress`] to
//! [`PROGRESS_FILE`] in the hand-over folder, the one place the training may write. The file is replaced whole
//! (written beside, then renamed: a reader never sees half of it), at most [`WRITES_PER_SECOND`] times a
//! second, without syncing to disk: losing it in a crash loses nothing. The printed step line is for people;
//! nothing parses it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The progress file in the hand-over folder.
pub const PROGRESS_FILE: &str = "progress.json";
/// How often the file is written at most.
pub const WRITES_PER_SECOND: u32 = 4;
/// Points of the loss curve kept: past this, every other one is dropped and only every 2nd step kept after.
pub const CURVE_POINTS: usize = 256;

/// What the progress file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The last step reported (0 = the first).
    pub step: u64,
    /// Its smoothed loss, as the training file reported it.
    pub loss: f64,
    /// The fraction of the training's time gone, from the phase's start until `train` must return (0 to 1).
    pub fraction: f64,
    /// Seconds until `train` must return.
    pub remaining_seconds: f64,
    /// (step, loss) so far, thinned to at most [`CURVE_POINTS`] evenly spaced points, and the last one.
    pub curve: Vec<(u64, f64)>,
}

impl Progress {
    /// The progress file `path`, if there is one that parses.
    pub fn read(path: &Path) -> Option<Progress> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// Keeps a training's progress and writes it to its file, throttled.
pub struct Recorder {
    path: PathBuf,
    /// When the training's clock started and when `train` must return.
    start: Instant,
    end: Instant,
    /// Every `stride`-th step's point.
    curve: Vec<(u64, f64)>,
    stride: u64,
    last: Option<(u64, f64)>,
    written: Option<Instant>,
    /// The last point is in the file.
    flushed: bool,
}

impl Recorder {
    pub fn new(path: PathBuf, start: Instant, end: Instant) -> Recorder {
        Recorder { path, start, end, curve: Vec::new(), stride: 1, last: None, written: None, flushed: true }
    }

    /// Step `step` ended with smoothed loss `loss`; written if the last write is long enough ago.
    pub fn record(&mut self, step: u64, loss: f64) -> Result<()> {
        if step.is_multiple_of(self.stride) {
            self.curve.push((step, loss));
            if self.curve.len() > CURVE_POINTS {
                self.stride *= 2;
                let stride = self.stride;
                self.curve.retain(|(s, _)| s.is_multiple_of(stride));
            }
        }
        self.last = Some((step, loss));
        self.flushed = false;
        let due = Duration::from_secs(1) / WRITES_PER_SECOND;
        if self.written.is_none_or(|w| w.elapsed() >= due) {
            self.write()?;
        }
        Ok(())
    }

    /// Writes the last point if the file does not hold it yet.
    pub fn flush(&mut self) -> Result<()> {
        if !self.flushed {
            self.write()?;
        }
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        let (step, loss) = self.last?;
        let now = Instant::now();
        let span = self.end.saturating_duration_since(self.start).as_secs_f64();
        let gone = now.saturating_duration_since(self.start).as_secs_f64();
        let remaining = match self.end.checked_duration_since(now) {
            Some(left) => left.as_secs_f64(),
            None => -now.duration_since(self.end).as_secs_f64(),
        };
        let mut curve = self.curve.clone();
        if curve.last() != Some(&(step, loss)) {
            curve.push((step, loss));
        }
        let fraction = if span > 0.0 { (gone / span).min(1.0) } else { 1.0 };
        Some(Progress { step, loss, fraction, remaining_seconds: remaining, curve })
    }

    fn write(&mut self) -> Result<()> {
        let Some(progress) = self.progress() else { return Ok(()) };
        let tmp = crate::fsutil::tmp_path(&self.path);
        std::fs::write(&tmp, serde_json::to_vec(&progress)?)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.written = Some(Instant::now());
        self.flushed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_the_last_step_and_a_thinned_curve_and_is_written_a_few_times_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRESS_FILE);
        let start = Instant::now();
        let mut recorder = Recorder::new(path.clone(), start, start + Duration::from_secs(100));
        assert_eq!(Progress::read(&path), None, "nothing before the first step");
        let before_first = Instant::now();
        recorder.record(0, 7.5).unwrap();
        let first = Progress::read(&path).unwrap();
        assert_eq!((first.step, first.loss, first.curve.clone()), (0, 7.5, vec![(0, 7.5)]));
        assert!(first.fraction < 0.01 && first.remaining_seconds > 99.0, "{first:?}");
        // Steps in quick succession are not each written; the flush writes the last.
        for step in 1..1000 {
            recorder.record(step, 7.5 - step as f64 / 1000.0).unwrap();
        }
        // Written again only a quarter second after the first write (a machine that stalled the loop that long).
        let written = Progress::read(&path).unwrap().step;
        assert!(written == 0 || before_first.elapsed() >= Duration::from_millis(250), "step {written} written early");
        recorder.flush().unwrap();
        let last = Progress::read(&path).unwrap();
        assert_eq!((last.step, last.loss), (999, 7.5 - 0.999));
        assert!(last.curve.len() <= CURVE_POINTS + 1, "{}", last.curve.len());
        assert_eq!(last.curve.first(), Some(&(0, 7.5)));
        assert_eq!(last.curve.last(), Some(&(999, 7.5 - 0.999)), "the last point always");
        let steps: Vec<u64> = last.curve.iter().map(|(s, _)| *s).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "in order: {steps:?}");
        assert!(steps.len() > CURVE_POINTS / 2, "evenly spaced over all steps: {}", steps.len());
        // The file is replaced whole: no temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [PROGRESS_FILE]);
    }

    #[test]
    fn a_file_that_cannot_be_written_is_named() {
        let start = Instant::now();
        let mut recorder =
            Recorder::new(PathBuf::from("/nonexistent/progress.json"), start, start + Duration::from_secs(1));
        let err = recorder.record(0, 1.0).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/progress.json"), "{err:#}");
    }
}
