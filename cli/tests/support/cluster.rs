//! A single-node Slurm cluster for the tests of the Slurm backend (`scripts/slurm.sh`), one at a time: the test
//! binaries run one after the other, and within one binary a single test starts it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MAIN_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A single-node Slurm cluster on this machine (`scripts/slurm.sh`), stopped when dropped.
pub struct Cluster {
    dir: PathBuf,
    pub conf: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slurm");
        let script = Path::new(MAIN_REPO).join("scripts/slurm.sh");
        let _ = Command::new(&script).arg("stop").arg(&dir).status();
        let out = Command::new(&script).arg("start").arg(&dir).stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "scripts/slurm.sh could not start a cluster");
        let conf =
            String::from_utf8(out.stdout).unwrap().trim().strip_prefix("export SLURM_CONF=").unwrap().to_string();
        Cluster { dir, conf }
    }

    pub fn script(&self, what: &str) {
        let status = Command::new(Path::new(MAIN_REPO).join("scripts/slurm.sh")).arg(what).arg(&self.dir).status();
        assert!(status.unwrap().success(), "scripts/slurm.sh {what}");
    }

    /// Slurm's client `program` with `args`: its stdout.
    pub fn client(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).env("SLURM_CONF", &self.conf).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The states of the queue's jobs.
    pub fn queue(&self) -> Vec<String> {
        self.client("squeue", &["-h", "-o", "%T"]).lines().map(str::to_string).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.script("stop");
    }
}
