//! The training binary: `autoresearch train` builds and runs it. Everything is in train.rs.

fn main() -> anyhow::Result<()> {
    train::main()
}
