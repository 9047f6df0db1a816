//! The CLI's build and the training binary's build give every third-party crate they share the same features, so
//! that the second build into the same target folder compiles none of them again. Asked of `cargo tree`, which
//! resolves features for the packages given with `-p` as `cargo build -p` does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// A compiled crate: `name vX.Y.Z`, and whether it is built for the host (a build script's or a proc-macro's
/// dependency), whose features cargo resolves apart from the rest.
type Unit = (String, bool);

/// What `cargo tree -p package` says each crate of its build is compiled with: the feature lists, one per place
/// (a crate cargo shows twice with different features in one build is compiled twice).
fn features(package: &str) -> BTreeMap<Unit, BTreeSet<String>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", package, "-e", "normal,build", "--format", "{p}|{f}", "--manifest-path"])
        .arg(&workspace)
        .output()
        .expect("running cargo tree");
    let text = String::from_utf8(out.stdout).expect("cargo tree's output is UTF-8");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    parse_tree(&text)
}

/// Reads cargo tree's indented output (4 characters a level; a `[build-dependencies]` line starts the build
/// dependencies of the crate above it, at that crate's indentation).
fn parse_tree(text: &str) -> BTreeMap<Unit, BTreeSet<String>> {
    let mut units: BTreeMap<Unit, BTreeSet<String>> = BTreeMap::new();
    // Per level of the current path: (built for the host, now listing its build-dependencies).
    let mut path: Vec<(bool, bool)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let start = line.find(|c: char| c.is_alphanumeric() || c == '[').expect("a line names something");
        let depth = line[..start].chars().count() / 4;
        let item = &line[start..];
        if item == "[build-dependencies]" {
            path[depth].1 = true;
            continue;
        }
        assert!(!item.starts_with('['), "unexpected section in cargo tree's output: {item}");
        let (package, features) = item.split_once('|').expect("a line is {p}|{f}");
        let features = features.trim_end_matches(" (*)");
        path.truncate(depth);
        let host = package.contains(" (proc-macro)") || path.last().is_some_and(|&(host, build)| host || build);
        path.push((host, false));
        // The name and version; a workspace member is also followed by its path.
        let name: String = package.split(' ').take(2).collect::<Vec<_>>().join(" ");
        units.entry((name, host)).or_default().insert(features.to_string());
    }
    units
}

#[test]
fn the_cli_and_the_training_binary_build_shared_crates_alike() {
    let cli = features("autoresearch");
    let training = features("autoresearch-train");
    let shared: Vec<&Unit> = cli.keys().filter(|unit| training.contains_key(*unit)).collect();
    assert!(shared.len() > 20, "the two builds share only {} crates: is the tree read right?", shared.len());
    let differ: Vec<String> = shared
        .into_iter()
        .filter(|unit| cli[*unit] != training[*unit])
        .map(|unit @ (name, host)| {
            let side = if *host { " (for build scripts and proc-macros)" } else { "" };
            format!("{name}{side}: the CLI's build {:?}, the training binary's {:?}", cli[unit], training[unit])
        })
        .collect();
    assert!(
        differ.is_empty(),
        "these crates would be compiled twice, once for each program; ask for the union of their features in \
         shared-deps/Cargo.toml:\n{}",
        differ.join("\n")
    );
}

#[test]
fn the_tree_reader_tells_host_crates_apart() {
    let tree = "\
top v0.1.0 (/w/top)|
├── a v1.0.0|std
│   └── m v1.0.0 (proc-macro)|
│       └── syn v3.0.0|full
│   [build-dependencies]
│   └── cc v1.0.0|
└── b v1.0.0|default,std
    └── a v1.0.0|std (*)
";
    let units = parse_tree(tree);
    let host = |name: &str| units.keys().find(|(n, _)| n.split(' ').next() == Some(name)).unwrap().1;
    assert!(!host("a") && !host("b") && !host("top"));
    assert!(host("m") && host("syn") && host("cc"));
    assert_eq!(units[&("top v0.1.0".to_string(), false)], BTreeSet::from([String::new()]));
    assert_eq!(units[&("a v1.0.0".to_string(), false)], BTreeSet::from(["std".to_string()]));
}
