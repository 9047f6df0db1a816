//! Lets this crate's tests find libtorch at run time without LD_LIBRARY_PATH (see train/build.rs).

fn main() {
    if let Ok(paths) = std::env::var("DEP_AUTORESEARCH_OPS_RPATH") {
        for dir in std::env::split_paths(&paths) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        }
    }
}
