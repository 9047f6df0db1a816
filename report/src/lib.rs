//! A research session's files, read and summarised without the loop: what `autoresearch report` and the dashboard
//! need, so that neither links the research loop (`autoresearch-research`, which writes these files through this
//! crate's formats).
//!
//! [`results`] is results.tsv's format (rows, statuses, reading, appending, repairing a torn line); [`report`] summarises one file (totals, keeps, gains against the noise, the workers' lanes)
//! as text and JSON, every gain by the session's [`metric`] (positive when better); [`compare`] sets several
//! sessions side by side (ranked only among those of one metric); `plot` draws their pictures (the `plot`
//! feature, on by default: the research loop and the dashboard leave it out and do not link plotters); [`noise`]
//! is `noise.json`, the seed-to-seed spread; [`files`] names the session's files and folders; [`journal`] is a
//! read-only view of the session's settings (its metric among them, and which session a results.tsv belongs to)
//! and of what the journals and run folders say runs now; [`metric`] is what a session measures and which way is
//! better; [`tree`] is how a session searches and the tree of its experiments (the best so far, the best's
//! lineage).

pub mod compare;
pub mod files;
pub mod journal;
pub mod metric;
pub mod noise;
#[cfg(feature = "plot")]
pub mod plot;
pub mod report;
pub mod results;
pub mod tree;
