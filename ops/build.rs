//! Builds the C++ shim against the libtorch that torch-sys links, and tells dependents where it is.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-changed=src/fused.cpp");
    println!("cargo:rerun-if-changed=src/softcap_ce.cu");
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH is not set: run scripts/libtorch.sh");
    // The real location: the torch libraries find their CUDA neighbours relative to it.
    let libtorch = std::fs::canonicalize(&libtorch)
        .unwrap_or_else(|e| panic!("LIBTORCH={libtorch}: {e} (run scripts/libtorch.sh)"));

    // The CUDA source goes into the library as a string, for NVRTC to compile at run time.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let source = std::fs::read_to_string("src/softcap_ce.cu").expect("src/softcap_ce.cu");
    std::fs::write(out.join("softcap_ce.cu.inc"), format!("R\"CUDA({source})CUDA\"")).unwrap();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/shim.cpp")
        .file("src/fused.cpp")
        .include(&out)
        .include(libtorch.join("include/torch/csrc/api/include"))
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
