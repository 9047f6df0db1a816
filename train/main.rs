//! The training binary: `autoresearch train` builds and runs it. Everything is in train.rs.

fn main() {
    if let Err(e) = train::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
