//! `autoresearch dashboard`: the live, read-only web page over research sessions (see `autoresearch-dashboard`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use autoresearch_dashboard::data::SessionFolder;
use autoresearch_research::project::project_root;

#[derive(clap::Args)]
pub struct Args {
    /// Session folders (repositories with a session), side by side [default: this repository]
    sessions: Vec<PathBuf>,
    /// Address to listen on; any other than a loopback address requires the token printed at start
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0: any free one)
    #[arg(long, default_value_t = 8765)]
    port: u16,
}

pub fn serve(args: Args) -> Result<()> {
    let dirs = if args.sessions.is_empty() { vec![project_root()?] } else { args.sessions };
    let sessions = dirs.iter().map(|d| SessionFolder::open(d)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = sessions.iter().map(|s| s.name.clone()).collect();
    let server = autoresearch_dashboard::serve(sessions, SocketAddr::new(args.bind, args.port))?;
    println!("dashboard of {}: {}", names.join(", "), server.url());
    if server.token.is_some() {
        println!("(bound to {}: every request needs the token in that address)", args.bind);
    }
    server.wait();
    Ok(())
}
