//! `autoresearch report`.

use std::path::PathBuf;

use anyhow::Result;
use autoresearch_report::compare::compare;
use autoresearch_report::files::{COMPARISON_PLOT, PROGRESS_PLOT, RESULTS_FILE};
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
    // The session's metric and noise come from the session folder beside the file (or its archive folder).
    let report = build(results)?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    for s in &report.skipped {
        eprintln!("warning: {} line {}: {} (skipped)", results.display(), s.line, s.reason);
    }
    if !args.no_plot {
        let dir = results.parent().map(PathBuf::from).unwrap_or_default();
        let out = args.plot.unwrap_or_else(|| dir.join(PROGRESS_PLOT));
        progress(results, &out, &report.noise, &report.metric, report.search)?;
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
    if args.no_plot {
        return Ok(());
    }
    if comparison.metrics().len() > 1 {
        eprintln!("no picture: the sessions measure different metrics, so their curves share no axis");
        return Ok(());
    }
    let out = args.plot.clone().unwrap_or_else(|| PathBuf::from(COMPARISON_PLOT));
    comparison.plot(&out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
