//! `autoresearch report`.

use std::path::PathBuf;

use anyhow::Result;
use autoresearch_research::report::{build, plot};
use autoresearch_research::rules::load_noise;
use autoresearch_research::{RESULTS_FILE, STATE_DIR};

#[derive(clap::Args)]
pub struct Args {
    /// A results.tsv (ours or the original's five-column file)
    #[arg(default_value = RESULTS_FILE)]
    results: PathBuf,
    /// Print one JSON document instead of text
    #[arg(long)]
    json: bool,
    /// Where to write the picture [default: progress.png beside the results file]
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Do not write the picture
    #[arg(long, conflicts_with = "plot")]
    no_plot: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.results.parent().map(PathBuf::from).unwrap_or_default();
    let noise: Vec<_> = load_noise(&dir.join(STATE_DIR))?.into_values().collect();
    let report = build(&args.results, noise.clone())?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_text());
    }
    for s in &report.skipped {
        eprintln!("warning: {} line {}: {} (skipped)", args.results.display(), s.line, s.reason);
    }
    if !args.no_plot {
        let out = args.plot.unwrap_or_else(|| dir.join("progress.png"));
        plot(&args.results, &out, &noise)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
