//! Builds the C++ shim against the libtorch that torch-sys links, and tells dependents where it is.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH is not set: run scripts/libtorch.sh");
    // The real location: the torch libraries find their CUDA neighbours relative to it.
    let libtorch = std::fs::canonicalize(&libtorch).unwrap_or_else(|e| panic!("LIBTORCH={libtorch}: {e} (run scripts/libtorch.sh)"));

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/shim.cpp")
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(libtorch.join("include"))
        .warnings(false);
    build.compile("autoresearch_ops_shim");

    let lib = libtorch.join("lib");
    let nvidia_lib = libtorch.join("../nvidia/cu13/lib");
    let nvidia_lib = std::fs::canonicalize(&nvidia_lib).unwrap_or(nvidia_lib);
    println!("cargo:rustc-link-search=native={}", lib.display());
    // For the binaries' build scripts: where the libraries are at run time here.
    let rpath: Vec<PathBuf> = vec![lib, nvidia_lib];
    println!("cargo:rpath={}", std::env::join_paths(rpath).unwrap().to_string_lossy());
}
