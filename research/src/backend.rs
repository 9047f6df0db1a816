//! Where a training's processes run, behind one interface: [`Local`] (processes on this machine) and
//! [`crate::slurm::Slurm`] (one Slurm job per training). A backend also says how a pool of workers shares what
//! it has (GPUs, cores, jobs).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::trainer::DeviceChoice;
use crate::Worker;

pub trait Backend: Send + Sync {
    /// Takes what one training needs, for at most `limit` (a job allocated, its name journaled first, so that
    /// a start after a kill gives it back); `interrupted` says when to stop waiting.
    fn acquire(&self, worker: &mut Worker, interrupted: &dyn Fn() -> bool, limit: Duration) -> Result<Acquired>;

    /// What each of `n` workers gets; `gpus` as the user listed them (`--gpus`), else all there are.
    fn setups(&self, n: usize, gpus: Option<&[String]>, device: DeviceChoice) -> Result<Vec<WorkerSetup>>;

    /// Whether trainings run on this machine (whose GPU the harness can then check before it starts).
    fn is_local(&self) -> bool;
}

/// How taking a training's resources went.
pub enum Acquired {
    Ready(Box<dyn Placement>),
    Interrupted,
    /// They cannot be had (the reason): the training is a crash.
    Failed(String),
}

/// Where one training's phases run, until released.
pub trait Placement: Send {
    /// A phase's command as it is run (as a step of the job, say).
    fn wrap(&self, cmd: Command) -> Command;
    /// Why a phase that failed failed, where the place it ran knows better than its exit status (a job that was
    /// cancelled or lost its node).
    fn failure(&self) -> Option<String>;
    /// Gives back what [`Backend::acquire`] took.
    fn release(self: Box<Self>, worker: &mut Worker) -> Result<()>;
}

/// What one worker gets: its environment (its GPU, or its share of the CPU's threads) and, on the CPU, the
/// cores its trainings are pinned to.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSetup {
    pub env: Vec<(String, String)>,
    /// CPU affinity of its training phases (empty: not pinned).
    pub cpus: Vec<usize>,
    /// In words, for the log: "GPU 3", "2 threads (cores 0-1)".
    pub label: String,
}

impl WorkerSetup {
    /// The machine as it is: no GPU chosen, no cores pinned, libtorch's own thread count.
    pub fn whole_machine() -> WorkerSetup {
        WorkerSetup { env: Vec::new(), cpus: Vec::new(), label: "the whole machine".into() }
    }
}

/// Processes on this machine.
pub struct Local;

struct Here;

impl Placement for Here {
    fn wrap(&self, cmd: Command) -> Command {
        cmd
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn release(self: Box<Self>, _: &mut Worker) -> Result<()> {
        Ok(())
    }
}

impl Backend for Local {
    fn acquire(&self, _: &mut Worker, _: &dyn Fn() -> bool, _: Duration) -> Result<Acquired> {
        Ok(Acquired::Ready(Box::new(Here)))
    }

    /// One worker gets the machine as it is (CUDA_VISIBLE_DEVICES chooses its GPU); several get a GPU each on
    /// CUDA, else a share of the cores.
    fn setups(&self, n: usize, gpus: Option<&[String]>, device: DeviceChoice) -> Result<Vec<WorkerSetup>> {
        match (n, gpus, device) {
            (1, None, _) => Ok(vec![WorkerSetup::whole_machine()]),
            (_, Some(list), DeviceChoice::Cuda) => local_setups(n, Some(list), &allowed_cpus()),
            (_, None, DeviceChoice::Cuda) => local_setups(n, Some(&visible_gpus()?), &allowed_cpus()),
            (_, Some(_), _) => bail!("--gpus: this session trains on the CPU"),
            (_, None, _) => local_setups(n, None, &allowed_cpus()),
        }
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// The cores this process may run on (its CPU affinity), in order.
pub fn allowed_cpus() -> Vec<usize> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// The GPUs a worker may be given: those CUDA_VISIBLE_DEVICES lists, else every GPU `nvidia-smi` sees.
fn visible_gpus() -> Result<Vec<String>> {
    if let Ok(list) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return Ok(list.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect());
    }
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .output()
        .context("running nvidia-smi to count the GPUs (or give them with --gpus)")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// One worker per GPU in `gpus`; or, on the CPU, `n` workers that split `cores` (the core ids): each gets its
/// own cores (its trainings pinned to them) and as many threads. Fewer cores than workers: shared, round robin.
pub fn local_setups(n: usize, gpus: Option<&[String]>, cores: &[usize]) -> Result<Vec<WorkerSetup>> {
    if n == 0 {
        bail!("--workers must be at least 1");
    }
    Ok(match gpus {
        Some(gpus) => {
            if gpus.len() < n {
                bail!(
                    "{n} workers need {n} GPUs (one each), but {} {} available: {}",
                    gpus.len(),
                    if gpus.len() == 1 { "is" } else { "are" },
                    gpus.join(",")
                );
            }
            gpus[..n]
                .iter()
                .map(|g| WorkerSetup {
                    env: vec![("CUDA_VISIBLE_DEVICES".into(), g.clone())],
                    cpus: Vec::new(),
                    label: format!("GPU {g}"),
                })
                .collect()
        }
        None => {
            let threads = (cores.len() / n).max(1);
            (0..n)
                .map(|i| {
                    let cpus: Vec<usize> = if cores.len() >= n {
                        cores[i * threads..(i + 1) * threads].to_vec()
                    } else {
                        cores.get(i % cores.len().max(1)).copied().into_iter().collect()
                    };
                    let env = vec![("OMP_NUM_THREADS".into(), threads.to_string())];
                    let ids: Vec<String> = cpus.iter().map(usize::to_string).collect();
                    let label = format!(
                        "{threads} thread{} (core{} {})",
                        if threads == 1 { "" } else { "s" },
                        if cpus.len() == 1 { "" } else { "s" },
                        ids.join(",")
                    );
                    WorkerSetup { env, cpus, label }
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_a_gpu_each_or_split_the_cores() {
        let gpus: Vec<String> = ["0", "1", "2"].map(String::from).to_vec();
        let cores = |n: usize| (0..n).collect::<Vec<usize>>();
        let s = local_setups(2, Some(&gpus), &cores(16)).unwrap();
        assert_eq!(s[1].env, vec![("CUDA_VISIBLE_DEVICES".to_string(), "1".to_string())]);
        assert_eq!((s[0].label.as_str(), s[0].cpus.len()), ("GPU 0", 0));
        let err = local_setups(4, Some(&gpus), &cores(16)).unwrap_err().to_string();
        assert!(err.contains("4 workers need 4 GPUs (one each), but 3 are available: 0,1,2"), "{err}");
        let s = local_setups(2, None, &cores(2)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].env, vec![("OMP_NUM_THREADS".to_string(), "1".to_string())]);
        assert_eq!((s[0].cpus.clone(), s[1].cpus.clone()), (vec![0], vec![1]), "a core each");
        let s = local_setups(3, None, &[2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]).unwrap();
        assert_eq!(
            (s[2].label.as_str(), &s[2].cpus[..]),
            ("5 threads (cores 14,15,16,17,18)", &[14, 15, 16, 17, 18][..])
        );
        assert_eq!(local_setups(4, None, &cores(2)).unwrap()[3].label, "1 thread (core 1)");
        assert!(local_setups(0, None, &cores(2)).is_err());
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn one_local_worker_gets_the_whole_machine() {
        let one = Local.setups(1, None, DeviceChoice::Cpu).unwrap();
        assert_eq!(one, vec![WorkerSetup::whole_machine()]);
        let two = Local.setups(2, None, DeviceChoice::Cpu).unwrap();
        assert!(two.iter().all(|s| s.env.iter().any(|(k, _)| k == "OMP_NUM_THREADS")), "{two:?}");
        let err = Local.setups(2, Some(&["0".to_string()]), DeviceChoice::Cpu).unwrap_err().to_string();
        assert!(err.contains("--gpus: this session trains on the CPU"), "{err}");
    }
}
