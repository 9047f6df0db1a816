//! Empty: it exists so that cargo applies this crate's build-dependencies (see Cargo.toml).

fn main() {}
