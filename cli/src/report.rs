//! `autoresearch report`.

use std::path::PathBuf;

use anyhow::Result;
use autoresearch_report::compare::compare;
use autoresearch_report::files::{RESULTS_FILE, STATE_DIR};
use autoresearch_report::noise::load_noise;
use autoresearch_report::plot::progress;
use autoresearch_report::report::build;

#[derive(clap::Args)]
pub struct Args {
    /// A results.tsv (ours or the original's five-column file); several are compared side by side
    #[arg(default_value = RESULTS_FILE, num_args = 1..)]
    results: Vec<PathBuf>,
    /// Print one JSON document instead of text
    #[arg(long)]
    json: bool,
    /// Where to write the picture [default: progress.png beside the results file; comparison.png here for several]
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Do not write the picture
    #[arg(long, conflicts_with = "plot")]
    no_plot: bool,
}

pub fn report(args: Args) -> Result<()> {
    if args.results.len() > 1 {
        return compare_sessions(&args);
    }
    let results = &args.results[0];
    let dir = results.parent().map(PathBuf::from).unwrap_or_default();
    let noise: Vec<_> = load_noise(&dir.join(STATE_DIR))?.into_values().collect();
    let report = build(results, noise.clone())?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    for s in &report.skipped {
        eprintln!("warning: {} line {}: {} (skipped)", results.display(), s.line, s.reason);
    }
    if !args.no_plot {
        let out = args.plot.unwrap_or_else(|| dir.join("progress.png"));
        progress(results, &out, &noise)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn compare_sessions(args: &Args) -> Result<()> {
    let comparison = compare(&args.results)?;
    if args.json {
        println!("{}", comparison.to_json()?);
    } else {
        print!("{}", comparison.to_text());
    }
    if !args.no_plot {
        let out = args.plot.clone().unwrap_or_else(|| PathBuf::from("comparison.png"));
        comparison.plot(&out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
