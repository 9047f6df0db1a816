//! Lets the training binary and its tests find libtorch at run time without LD_LIBRARY_PATH (an rpath to
//! the libtorch it was built against); on a GPU machine LD_LIBRARY_PATH, which wins, points at that one's.

fn main() {
    if let Ok(paths) = std::env::var("DEP_AUTORESEARCH_OPS_RPATH") {
        for dir in std::env::split_paths(&paths) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // Linked although no code names it: rustc's --as-needed would drop libtorch_cuda, and libtorch would
        // then never register its CUDA kernels (tch-rs issue 980).
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        // libtorch_cuda needs the CUDA libraries (cuBLAS, cuDNN, ...), which only the GPU machine has.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
