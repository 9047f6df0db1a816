//! The sandbox the agent's code runs in (Linux Landlock, unprivileged): it may read a list of paths (on the CPU
//! the training its data, tokenizer and binary; the build the repository's sources, the toolchain and the
//! system's folders; the evaluation's model process its checkpoint, its binary and a few system files), or everything, in
//! either case save the validation data and earlier experiments' files (but its own hand-over folder); write only
//! beneath a few folders and device nodes, open no TCP connection and bind no TCP port (Landlock ABI 4; on the CPU
//! no socket but Unix ones, by a seccomp filter), and signal or reach
//! through abstract Unix sockets no process outside its sandbox (ABI 6). The training binary applies it to
//! itself before the agent's code starts; children inherit it. Where the kernel's Landlock lacks the network or
//! scope rules, the log line says so.
//!
//! Landlock only grants: to deny one file, every entry of each folder on the way down to it is granted one by
//! one, and the folders on the way get only the right to list them. Symbolic links are judged by where they
//! lead, so that a link to a folder above the validation data does not open it. Not covered: bind mounts and
//! hard links of the data elsewhere, files created later directly in a folder on the way, and names: a readable
//! folder's listing right reaches every folder beneath it, so a denied folder can be listed, not read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

/// What the sandboxed process may not read, and where alone it may write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Where set, all it may read: these files and what lies beneath these folders (links followed), save
    /// `deny_read`, and `read` besides; else everything save `deny_read`. Missing paths are left out.
    pub only_read: Option<Vec<PathBuf>>,
    /// Files and folders it may neither read, list nor run.
    pub deny_read: Vec<PathBuf>,
    /// Folders beneath which it may read, even inside a denied one (its own hand-over folder in the session's);
    /// each must exist.
    pub read: Vec<PathBuf>,
    /// It lists no folder, not even one it reads beneath. Reading a file or listing a folder can set its access
    /// time, which any later process can see with `stat` (Landlock governs neither): only a process that reads
    /// nothing but what fixed code reads anyway, and lists nothing, leaves no message there.
    pub no_listing: bool,
    /// Folders beneath which it may write, and files (device nodes) it may write; nothing else is writable.
    pub write: Vec<PathBuf>,
    /// TCP stays open (the build, which may fetch crates); else no TCP connection or bound port.
    pub allow_network: bool,
    /// Of sockets, Unix ones alone: no IPv4 or IPv6 socket at all, UDP included, no netlink socket (its
    /// `sock_diag` lists every socket of the network namespace, the names of abstract Unix ones, which another
    /// process can choose, included) nor any other family's, and no io_uring (which could open one past the
    /// filter): a seccomp filter, on top of Landlock's TCP rules. Set on the CPU; CUDA keeps the policy measured
    /// on a GPU.
    pub unix_sockets_only: bool,
    /// No file's permissions, owner, times or extended attributes changed (the chmod, chown, utime and xattr calls
    /// fail): Landlock governs none of them, so a process could leave a message in any file it can name, for a
    /// later one to read with `stat`. A seccomp filter; set on the CPU, with `unix_sockets_only`.
    pub keep_metadata: bool,
    /// No kernel object that outlives the process but files: keyrings (`add_key`, `keyctl`: a red team carried a
    /// model's weights from one training to the next in the user's keyring), System V shared memory, message
    /// queues and semaphores, POSIX message queues and BPF calls fail; nor can it evict a file's pages from the
    /// page cache or ask which are there (`madvise` MADV_PAGEOUT or MADV_COLD, `fadvise` DONTNEED, `mincore`,
    /// `cachestat`: another red team wrote validation tokens in which pages of libtorch's library it evicted, for
    /// the next training to read), nor ask it without waiting (`preadv2` with RWF_NOWAIT, or Linux's
    /// asynchronous I/O, which takes that flag where no filter sees it). A seccomp filter; set on the CPU.
    pub no_kernel_objects: bool,
    /// Before anything else, every page of the files it maps (its binary and libraries) is loaded into the page
    /// cache ([`crate::resident`]): which of them an earlier process loaded, one bit a page, is no message a read's
    /// time could show. Set on the CPU.
    pub load_mapped_files: bool,
    /// Of its capabilities it keeps those over files' permissions alone (root reading and writing files other
    /// users own, which Landlock confines regardless): a process running as root could otherwise set the clock
    /// (`adjtimex`, `settimeofday`), its own priority above others' (`renice -20`, as a red team did), the
    /// hostname, or its user. Set on the CPU, and for a project's commands.
    pub file_capabilities_only: bool,
    /// It sets the priority, scheduling policy, I/O priority and resource limits of itself alone, naming itself
    /// as pid 0, where a process may otherwise set those of any other of its user's, capability or not: demote
    /// another worker's training, or the harness, and take their CPU. (Not the CPU affinity: threads set their
    /// own by their ids, which a filter cannot tell from another process's.) A seccomp filter; set on the CPU.
    pub others_untouched: bool,
    /// With `only_read`: it reads the [`system_reads`] too, found where the policy is applied.
    pub system_reads: bool,
    /// No sandbox at all: the user turned it off (`AUTORESEARCH_SANDBOX=off`).
    pub off: bool,
}

/// What libtorch, OpenMP and Rust's standard library read of the system on the CPU, besides the program's own
/// files, found in the process that applies the policy (where `Policy::system_reads` asks for them): random
/// seeds, the CPUs' description, files of the process's own `/proc` folder and its cgroup's CPU quota. Facts no
/// other process moves: not the counters that processes running side by side could signal each other through (a
/// cgroup's memory or CPU use, a core's idle time or frequency, the network namespace's sockets in
/// `/proc/self/net`, which pages of a shared library other processes map in `/proc/self/smaps`). Reading them
/// sets no access time that lasts: procfs, sysfs and device nodes keep none.
pub fn system_reads() -> Vec<PathBuf> {
    let mut reads: Vec<PathBuf> = vec!["/dev/urandom".into(), "/proc/cpuinfo".into()];
    reads.extend(OWN_PROC_FILES.map(|f| Path::new("/proc/self").join(f)));
    let cpus = Path::new("/sys/devices/system/cpu");
    reads.extend(["possible", "present", "online", "kernel_max"].map(|f| cpus.join(f)));
    for entry in std::fs::read_dir(cpus).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            let cpu = cpus.join(&name);
            reads.extend([cpu.join("topology"), cpu.join("cache")]);
            reads.extend(["cpuinfo_max_freq", "cpuinfo_min_freq"].map(|f| cpu.join("cpufreq").join(f)));
        }
    }
    let own = |file: &str| std::fs::read_to_string(Path::new("/proc/self").join(file)).unwrap_or_default();
    reads.extend(cgroup_quota_files(&own("cgroup"), &own("mountinfo")));
    reads
}

/// The files of a process's own `/proc` folder that it reads (its memory's map and use, its limits, its cgroup
/// and mounts, to find the CPU quota): granted to the process that applies the policy alone, not to the
/// processes it starts.
pub const OWN_PROC_FILES: [&str; 11] =
    ["stat", "statm", "status", "maps", "cgroup", "mountinfo", "cmdline", "comm", "environ", "auxv", "limits"];

/// The files that hold the CPU quota of the process's cgroup and of the groups above it, from the texts of
/// `/proc/self/cgroup` and `/proc/self/mountinfo`: cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us` and
/// `cpu.cfs_period_us`, where the cgroup file systems are mounted. Some need not exist.
pub fn cgroup_quota_files(proc_self_cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for mount in mountinfo.lines() {
        let Some((mine, theirs)) = mount.split_once(" - ") else { continue };
        let (mine, theirs): (Vec<&str>, Vec<&str>) = (mine.split(' ').collect(), theirs.split(' ').collect());
        let (Some(root), Some(point), Some(kind)) = (mine.get(3), mine.get(4), theirs.first()) else { continue };
        let options = theirs.get(2).copied().unwrap_or_default();
        let names: &[&str] = match *kind {
            "cgroup2" => &["cpu.max"],
            "cgroup" if options.split(',').any(|o| o == "cpu") => &["cpu.cfs_quota_us", "cpu.cfs_period_us"],
            _ => continue,
        };
        // The process's group in this hierarchy: v2's line has no controllers, v1's names the CPU's.
        let group = proc_self_cgroup.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, group) = (fields.next()?, fields.next()?, fields.next()?);
            let v2 = *kind == "cgroup2";
            (v2 && controllers.is_empty() || !v2 && controllers.split(',').any(|c| c == "cpu")).then_some(group)
        });
        let Some(group) = group else { continue };
        // Where the group lies beneath the mount's root; a group outside it (`/..`, another namespace's) is read
        // at the mount's top alone.
        let (root, point) = (unescape(root), PathBuf::from(unescape(point)));
        let inside = Path::new(group)
            .strip_prefix(&root)
            .ok()
            .filter(|p| p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
        for above in inside.unwrap_or(Path::new("")).ancestors() {
            files.extend(names.iter().map(|n| point.join(above).join(n)));
        }
    }
    files
}

/// A path as /proc/self/mountinfo writes it, with space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out + rest
}

/// The system's programs and their libraries (and the dynamic loader's cache; on Nix the store): what a child
/// process the training starts (`sh`, `nvidia-smi`) reads to run. Not `/usr/share` or `/usr/local`, where data
/// could lie.
pub const PROGRAM_READS: [&str; 11] = [
    "/usr/bin",
    "/bin",
    "/usr/sbin",
    "/sbin",
    "/usr/lib",
    "/lib",
    "/lib64",
    "/usr/lib64",
    "/usr/libexec",
    "/etc/ld.so.cache",
    "/nix/store",
];

/// The Landlock version whose rights we handle: file system reads and writes, truncation and device ioctls.
const ABI_USED: ABI = ABI::V5;

impl Policy {
    /// The confinement beyond Landlock's rules that has run on the CPU alone (`on`; else none, as CUDA keeps the
    /// policy measured on a GPU): Unix sockets only, files' metadata kept, no kernel objects, the mapped files
    /// loaded, the capabilities over files' permissions only, other processes untouched. The rest of the policy is
    /// the caller's.
    pub fn cpu_confinement(on: bool) -> Policy {
        Policy {
            unix_sockets_only: on,
            keep_metadata: on,
            no_kernel_objects: on,
            load_mapped_files: on,
            file_capabilities_only: on,
            others_untouched: on,
            ..Policy::default()
        }
    }

    /// No sandbox, where the user's environment says `AUTORESEARCH_SANDBOX=off` (a way out on a machine where
    /// the sandbox gets in the way of its drivers); else `self`.
    pub fn unless_turned_off(self) -> Policy {
        match std::env::var("AUTORESEARCH_SANDBOX") {
            Ok(v) if v == "off" => Policy { off: true, ..Policy::default() },
            _ => self,
        }
    }

    /// Restricts this thread and the threads and processes it starts from now on. Returns a line for the log:
    /// what is enforced, or that the kernel offers no sandbox (the run goes on unconfined).
    pub fn apply(&self) -> Result<String> {
        if self.off {
            return Ok("sandbox: off (AUTORESEARCH_SANDBOX=off): the agent's code runs unconfined".into());
        }
        // Before the filter, which refuses the mincore it asks with.
        let loaded = if self.load_mapped_files { Some(crate::resident::load_mapped_files()?) } else { None };
        refuse_calls(self)?;
        let read = AccessFs::from_read(ABI_USED);
        let write = AccessFs::from_write(ABI_USED);
        // What it reads: rules (a path, and whether it is read whole or only listed), the rights of a whole one,
        // and how the log says so. A listing sets a folder's access time (where the mount keeps them): a process
        // without listing reads the files beneath its folders and lists none, not even on the way to a denied path.
        let mut only_read = self.only_read.clone();
        if let (Some(only), true) = (only_read.as_mut(), self.system_reads) {
            only.extend(system_reads());
        }
        let roots = only_read.unwrap_or_else(|| vec![PathBuf::from("/")]);
        let denied_named: Vec<_> = self.deny_read.iter().map(|p| p.canonicalize().ok()).collect();
        let denied: Vec<_> = denied_named.iter().flatten().cloned().collect();
        let mut rules = read_rules(&roots, &denied)?;
        let whole_read = if self.no_listing {
            rules.retain(|(_, whole)| *whole);
            read & !AccessFs::ReadDir
        } else {
            read
        };
        // The log names what it reads that exists (a list for any machine names some that do not).
        let only: Option<Vec<PathBuf>> =
            self.only_read.as_ref().map(|o| o.iter().filter(|p| p.exists()).cloned().collect());
        let mut what = match &only {
            Some(only) if only.len() > LISTED => {
                format!("reads only {} and {} more", list(&only[..LISTED]), only.len() - LISTED)
            }
            Some(only) => format!("reads only {}", list(only)),
            None => "reads everything".to_string(),
        };
        if only.is_some() && self.system_reads {
            what += " and what libtorch reads of the system (/dev/urandom, files of its own /proc folder, \
                     /proc/cpuinfo, the CPUs' description in /sys, its cgroup's CPU quota)";
        }
        // Of the denied paths, those it could read but for the denial (beneath what it reads).
        let roots: Vec<_> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        let unreadable: Vec<_> = self
            .deny_read
            .iter()
            .zip(&denied_named)
            .filter(|(_, real)| real.as_ref().is_some_and(|real| roots.iter().any(|r| real.starts_with(r))))
            .map(|(named, _)| named.clone())
            .collect();
        if !unreadable.is_empty() {
            what += &format!("; {} unreadable", list(&unreadable));
        }
        if !self.read.is_empty() {
            what += &format!(" (but {})", list(&self.read));
        }
        if self.no_listing {
            what += "; lists no folder";
        }
        // Listing is a right of folders only: a file's rule without it, or Landlock counts the rule as only
        // partly enforced.
        let rule = |path: &Path, access: BitFlags<AccessFs>| -> Result<PathBeneath<PathFd>> {
            let access = if path.is_dir() { access } else { access & AccessFs::from_file(ABI_USED) };
            Ok(PathBeneath::new(
                PathFd::new(path).with_context(|| format!("sandbox: opening {}", path.display()))?,
                access,
            ))
        };
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(ABI_USED))?;
        if !self.allow_network {
            ruleset = ruleset.handle_access(AccessNet::from_all(ABI::V4))?;
        }
        let mut ruleset = ruleset.scope(Scope::from_all(ABI::V6))?.create()?;
        let mut pins = Vec::new();
        for (path, whole) in &rules {
            pin_if_in_proc(path, &mut pins);
            if let Some(r) = unless_gone(path, rule(path, if *whole { whole_read } else { AccessFs::ReadDir.into() }))?
            {
                ruleset = ruleset.add_rule(r)?;
            }
        }
        for dir in &self.read {
            ruleset = ruleset.add_rule(rule(dir, whole_read)?)?;
        }
        for dir in &self.write {
            pin_if_in_proc(dir, &mut pins);
            ruleset = ruleset.add_rule(rule(dir, write)?)?;
        }
        // Once the rules' paths are open: a root that reads them only through its capabilities still could.
        if self.file_capabilities_only {
            keep_file_capabilities_only()?;
        }
        let status = ruleset.restrict_self().context("sandbox: enforcing the Landlock rules")?;
        PINNED.lock().unwrap_or_else(|e| e.into_inner()).extend(pins);
        if status.ruleset == RulesetStatus::NotEnforced {
            return Ok("sandbox: none (this kernel has no Landlock): the agent's code runs unconfined".to_string());
        }
        let abi = match status.landlock {
            LandlockStatus::Available { effective_abi, .. } => effective_abi,
            _ => ABI::Unsupported,
        };
        what += &match self.write.is_empty() {
            true => ", nothing writable".to_string(),
            false => format!(", writes only to {}", list(&self.write)),
        };
        what += match (self.allow_network, abi >= ABI::V4) {
            (true, _) => ", network open",
            (false, true) => ", network closed (no TCP connect or bind)",
            (false, false) => ", network OPEN: this kernel's Landlock has no TCP rules (ABI 4)",
        };
        if self.unix_sockets_only {
            what += ", no sockets but Unix ones (no UDP, no netlink)";
        }
        if self.keep_metadata {
            what += ", no file's permissions, owner, times or attributes changed";
        }
        if self.no_kernel_objects {
            what += ", no keyrings, System V IPC, message queues, BPF or page-cache eviction or queries";
        }
        if let Some(loaded) = loaded {
            what += &format!(
                ", the {} files it maps wholly in the page cache ({:.1} MiB of them read now, {:.2} s)",
                loaded.files,
                loaded.read as f64 / (1u64 << 20) as f64,
                loaded.seconds
            );
        }
        if self.file_capabilities_only {
            what += ", no capabilities but over files' permissions";
        }
        if self.others_untouched {
            what += ", no other process's priority, scheduling or limits";
        }
        what += if abi >= ABI::V6 {
            ", no signals or abstract sockets out of the sandbox"
        } else {
            ", signals out of the sandbox OPEN: this kernel's Landlock has no scopes (ABI 6)"
        };
        Ok(format!("sandbox: Landlock ABI {}: {what}", abi as i32))
    }
}

/// Open descriptors of the /proc entries the rules grant, kept while the process lives. procfs makes a new inode
/// for an entry it looks up again once the kernel dropped it (under memory pressure, or `drop_caches`), and a
/// Landlock rule holds the old one: the grant would be gone. An open descriptor keeps the entry. (Not past an
/// `exec`: the programs run sandboxed, the build and a project's commands, are granted /proc whole, whose rule
/// is on its mount's root, which stays.)
static PINNED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

fn pin_if_in_proc(path: &Path, pins: &mut Vec<std::fs::File>) {
    use std::os::unix::fs::OpenOptionsExt;
    if path.canonicalize().is_ok_and(|real| real.starts_with("/proc")) {
        let pin = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path);
        pins.extend(pin.ok());
    }
}

/// Restricts this process by `policy` and replaces it with `program`: how a command (the build of the training
/// file) runs sandboxed. Returns only on an error.
pub fn exec_sandboxed(policy: &Policy, program: &std::ffi::OsStr, args: &[std::ffi::OsString]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    // What this launcher maps is not what the program it runs will: loading what a process maps is for the
    // training binary's phases, which apply their policy themselves.
    let policy = Policy { load_mapped_files: false, ..policy.clone() };
    match policy.apply() {
        Ok(line) => eprintln!("{line}"),
        Err(e) => return e,
    }
    let error = std::process::Command::new(program).args(args).exec();
    anyhow::Error::new(error).context(format!("running {}", program.to_string_lossy()))
}

/// The calls that change a file's permissions, owner, times or extended attributes. `setxattrat` and
/// `removexattrat` (Linux 6.13) have one number on every architecture; libc names them not yet.
fn metadata_calls() -> Vec<i64> {
    const SETXATTRAT: i64 = 463;
    const REMOVEXATTRAT: i64 = 466;
    #[allow(unused_mut)]
    let mut calls = vec![
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchmodat2,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
        SETXATTRAT,
        REMOVEXATTRAT,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
    ]);
    calls
}

/// The calls that make or reach kernel objects which outlive a process without being files: keyrings, System V
/// IPC, POSIX message queues, BPF maps and programs.
fn kernel_object_calls() -> Vec<i64> {
    vec![
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_shmget,
        libc::SYS_shmat,
        libc::SYS_shmctl,
        libc::SYS_shmdt,
        libc::SYS_msgget,
        libc::SYS_msgsnd,
        libc::SYS_msgrcv,
        libc::SYS_msgctl,
        libc::SYS_semget,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_semctl,
        libc::SYS_mq_open,
        libc::SYS_mq_unlink,
        libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive,
        libc::SYS_mq_notify,
        libc::SYS_mq_getsetattr,
        libc::SYS_bpf,
    ]
}

/// The capabilities a phase keeps: those over files' permissions (`CAP_CHOWN`, `CAP_DAC_OVERRIDE`,
/// `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`), which Landlock confines regardless.
const FILE_CAPABILITIES: u32 = 0b1111;

/// Drops every capability of this thread and of what it starts from now on but the [`FILE_CAPABILITIES`]: from
/// the bounding set (where this thread may: it takes `CAP_SETPCAP`), the ambient set, then the effective,
/// permitted and inheritable sets. A program it runs gains none back, as root neither (the bounding set holds no
/// more, and no_new_privs, which Landlock sets, keeps an `exec` from adding any).
fn keep_file_capabilities_only() -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let error = || std::io::Error::last_os_error();
    // SAFETY: prctl, capget and capset with plain arguments and structures of the kernel's layout; they read or
    // change only this thread's capabilities.
    unsafe {
        // Up to the last capability this kernel knows (it answers EINVAL past it); without CAP_SETPCAP, none.
        for cap in (0..64u32).filter(|&c| c >= 32 || FILE_CAPABILITIES & (1 << c) == 0) {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINVAL) | Some(libc::EPERM) => break,
                    _ => anyhow::bail!("sandbox: dropping capability {cap} from the bounding set: {}", error()),
                }
            }
        }
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) != 0 {
            anyhow::bail!("sandbox: clearing the ambient capabilities: {}", error());
        }
        let header = Header { version: VERSION_3, pid: 0 };
        let mut now = [Data::default(); 2];
        if libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) != 0 {
            anyhow::bail!("sandbox: reading the capabilities: {}", error());
        }
        // Only ever fewer: the low word keeps the file capabilities it has, the high word none.
        let low = Data {
            effective: now[0].effective & FILE_CAPABILITIES,
            permitted: now[0].permitted & FILE_CAPABILITIES,
            inheritable: 0,
        };
        let kept = [low, Data::default()];
        if libc::syscall(libc::SYS_capset, &header, kept.as_ptr()) != 0 {
            anyhow::bail!("sandbox: dropping the capabilities: {}", error());
        }
    }
    Ok(())
}

/// Makes calls fail (EACCES) in this thread and what it starts from now on, as `policy` asks: with
/// `unix_sockets_only`, `socket` for every family but Unix sockets and `io_uring_setup` for everything; with
/// `keep_metadata`, the [`metadata_calls`]; with `no_kernel_objects`, the [`kernel_object_calls`]; with
/// `others_untouched`, the calls that set a process's priority, scheduling or limits, but on itself. Where the
/// policy asks for none, no filter at all.
fn refuse_calls(policy: &Policy) -> Result<()> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let mut rules = std::collections::BTreeMap::new();
    // A rule per condition: the call is refused where any holds.
    let rule = |arg: u8, op: SeccompCmpOp, value: u64| -> Result<SeccompRule> {
        Ok(SeccompRule::new(vec![SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)?])?)
    };
    let unless = |arg: u8, value: u64| rule(arg, SeccompCmpOp::Ne, value);
    let when = |arg: u8, value: u64| rule(arg, SeccompCmpOp::Eq, value);
    if policy.unix_sockets_only {
        rules.insert(libc::SYS_socket, vec![unless(0, libc::AF_UNIX as u64)?]);
        rules.insert(libc::SYS_io_uring_setup, Vec::new());
    }
    if policy.keep_metadata {
        rules.extend(metadata_calls().into_iter().map(|call| (call, Vec::new())));
    }
    if policy.no_kernel_objects {
        rules.extend(kernel_object_calls().into_iter().map(|call| (call, Vec::new())));
        // The page cache: nothing evicted or asked after (what a process reads it loads, which is no message).
        const CACHESTAT: i64 = 451;
        const MADV_COLD: u64 = 20;
        const MADV_PAGEOUT: u64 = 21;
        rules.insert(libc::SYS_mincore, Vec::new());
        rules.insert(CACHESTAT, Vec::new());
        rules.insert(libc::SYS_madvise, vec![when(2, MADV_COLD)?, when(2, MADV_PAGEOUT)?]);
        rules.insert(libc::SYS_fadvise64, vec![when(3, libc::POSIX_FADV_DONTNEED as u64)?]);
        // Which pages are there, asked by a read that fails rather than wait for the disk.
        let nowait = libc::RWF_NOWAIT as u64;
        for call in [libc::SYS_preadv2, libc::SYS_pwritev2] {
            rules.insert(call, vec![rule(5, SeccompCmpOp::MaskedEq(nowait), nowait)?]);
        }
        rules.insert(libc::SYS_io_setup, Vec::new());
        rules.insert(libc::SYS_io_uring_setup, Vec::new());
    }
    if policy.others_untouched {
        // Itself is pid 0; setpriority and ioprio_set also name whose (a process, a group, a user), which must be
        // a process; prlimit64 may read another's limits (no new limit given), not set them.
        for call in [libc::SYS_sched_setscheduler, libc::SYS_sched_setparam, libc::SYS_sched_setattr] {
            rules.insert(call, vec![unless(0, 0)?]);
        }
        rules.insert(libc::SYS_setpriority, vec![unless(0, libc::PRIO_PROCESS as u64)?, unless(1, 0)?]);
        const IOPRIO_WHO_PROCESS: u64 = 1;
        rules.insert(libc::SYS_ioprio_set, vec![unless(0, IOPRIO_WHO_PROCESS)?, unless(1, 0)?]);
        let setting_another = vec![
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0)?,
            SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0)?,
        ];
        rules.insert(libc::SYS_prlimit64, vec![SeccompRule::new(setting_another)?]);
    }
    if rules.is_empty() {
        return Ok(());
    }
    let arch = std::env::consts::ARCH.try_into().context("sandbox: seccomp on this architecture")?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES as u32), arch)?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    // SAFETY: prctl with constant arguments; it only sets this thread's no_new_privs bit (which seccomp needs).
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        anyhow::bail!("sandbox: setting no_new_privs: {}", std::io::Error::last_os_error());
    }
    seccompiler::apply_filter(&program).context("sandbox: applying the seccomp filter")?;
    refuse_x32_calls()
}

/// x32's calls are x86-64's numbers with bit 30 set, under the same architecture: where the kernel has x32
/// (`syscall.x32=y`), a filter by number would let every one of them through. A second filter refuses them all.
#[cfg(target_arch = "x86_64")]
fn refuse_x32_calls() -> Result<()> {
    use seccompiler::sock_filter;
    const LOAD_NUMBER: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, at seccomp_data.nr (offset 0)
    const JUMP_IF_AT_LEAST: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
    const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    let program = vec![
        sock_filter { code: LOAD_NUMBER, jt: 0, jf: 0, k: 0 },
        sock_filter { code: JUMP_IF_AT_LEAST, jt: 0, jf: 1, k: 0x4000_0000 },
        sock_filter { code: RETURN, jt: 0, jf: 0, k: ERRNO | libc::EACCES as u32 },
        sock_filter { code: RETURN, jt: 0, jf: 0, k: ALLOW },
    ];
    seccompiler::apply_filter(&program).context("sandbox: applying the x32 filter")
}

#[cfg(not(target_arch = "x86_64"))]
fn refuse_x32_calls() -> Result<()> {
    Ok(())
}

/// How many of the paths a process reads the log names (a build reads each of the repository's sources).
const LISTED: usize = 40;

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A walked path's rule, or none where the path was removed since the walk listed it (another process's
/// temporary file, say): nothing is left there to grant.
fn unless_gone<T>(path: &Path, rule: Result<T>) -> Result<Option<T>> {
    match rule {
        Ok(r) => Ok(Some(r)),
        Err(_) if std::fs::symlink_metadata(path).is_err() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read rules that reach what lies beneath `roots` (each where it leads; a missing one is left out) but `deny`
/// (canonical paths): (path, true) grants reading beneath it, (path, false) only listing it (a folder on the way
/// to a denied path).
pub fn read_rules(roots: &[PathBuf], deny: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>> {
    let mut rules = Vec::new();
    for root in roots {
        if let Ok(real) = root.canonicalize() {
            rules_for(&real, &real, deny, &mut rules)?;
        }
    }
    Ok(rules)
}

/// The rules for `path`, which leads to `real`: none where it lies beneath a denied path; where one lies beneath
/// it, the right to list it and its entries' rules one by one, through its real location only, never through a
/// link; else the whole of it.
fn rules_for(path: &Path, real: &Path, deny: &[PathBuf], rules: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    if deny.iter().any(|d| real.starts_with(d)) {
        return Ok(());
    }
    if !deny.iter().any(|d| d.starts_with(real)) {
        rules.push((path.to_path_buf(), true));
        return Ok(());
    }
    if real != path {
        return Ok(());
    }
    rules.push((path.to_path_buf(), false));
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("sandbox: listing {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        // Where the entry leads; a dangling link leads nowhere and needs no rule.
        if let Ok(real) = entry.canonicalize() {
            rules_for(&entry, &real, deny, rules)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` in a thread of its own sandboxed by `policy` (the sandbox restricts the thread that applies it
    /// and what it starts, not the test's other threads); the sandbox's log line.
    fn in_sandbox(policy: Policy, body: impl FnOnce() + Send + 'static) -> String {
        std::thread::spawn(move || {
            let line = policy.apply().unwrap();
            body();
            line
        })
        .join()
        .unwrap()
    }

    fn denied(result: std::io::Result<()>) -> bool {
        result.unwrap_err().kind() == std::io::ErrorKind::PermissionDenied
    }

    #[test]
    fn no_kernel_objects_alone_refuses_io_uring_which_could_ask_for_pages_past_the_filter() {
        // A project with the network keeps its sockets (no `unix_sockets_only`), not io_uring's RWF_NOWAIT reads.
        in_sandbox(Policy { no_kernel_objects: true, ..Policy::default() }, || {
            let mut params = [0u8; 120]; // struct io_uring_params
            let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
            assert_eq!((ring, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EACCES)));
        });
    }

    #[test]
    fn a_policy_from_json_names_a_field_it_does_not_know() {
        let policy: Policy = serde_json::from_str(r#"{"write": ["/tmp"], "no_kernel_objects": true}"#).unwrap();
        assert_eq!(policy, Policy { write: vec![PathBuf::from("/tmp")], no_kernel_objects: true, ..Policy::default() });
        // A misspelt confinement would otherwise be left out without a word.
        let error = serde_json::from_str::<Policy>(r#"{"no_kernel_objekts": true}"#).unwrap_err().to_string();
        assert!(error.contains("unknown field `no_kernel_objekts`"), "{error}");
    }

    #[test]
    fn every_entry_but_the_denied_ones_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for d in ["data", "data/sub", "other"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["data/val.parquet", "data/train.parquet", "other/x"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        std::os::unix::fs::symlink(root.join("data"), root.join("link-to-data")).unwrap();
        std::os::unix::fs::symlink(root.join("data/val.parquet"), root.join("link-to-val")).unwrap();
        std::os::unix::fs::symlink(root.join("other"), root.join("link-to-other")).unwrap();
        let val = root.join("data/val.parquet");
        let rules = read_rules(&[PathBuf::from("/")], std::slice::from_ref(&val)).unwrap();
        let whole = |p: &Path| rules.iter().any(|(r, w)| *w && p.starts_with(r));
        let listed = |p: &Path| rules.iter().any(|(r, w)| !*w && r == p);
        assert!(!whole(&val), "the denied file is not readable");
        assert!(rules.iter().all(|(r, _)| r != &root.join("link-to-data") && r != &root.join("link-to-val")));
        for p in ["data/train.parquet", "data/sub", "other/x", "link-to-other"] {
            assert!(whole(&root.join(p)), "{p} is readable");
        }
        assert!(whole(Path::new("/usr/lib")) && whole(Path::new("/etc")));
        for p in [Path::new("/"), &root, &root.join("data")] {
            assert!(listed(p) && !whole(p), "{} is only listed", p.display());
        }
        assert_eq!(read_rules(&[PathBuf::from("/")], &[]).unwrap(), vec![(PathBuf::from("/"), true)]);

        // Beneath a list of roots: nothing above or beside them, a root given as a link where it leads, a
        // missing root left out, a root inside a denied folder left out.
        let roots = [root.join("data"), root.join("link-to-other"), root.join("missing"), root.join("data/sub")];
        let deny = [val.clone(), root.join("data/sub")];
        let rules = read_rules(&roots, &deny).unwrap();
        assert_eq!(
            rules,
            vec![(root.join("data"), false), (root.join("data/train.parquet"), true), (root.join("other"), true)]
        );
    }

    #[test]
    fn a_path_removed_after_the_walk_needs_no_rule_and_other_failures_stay_errors() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let open = |p: &Path| PathFd::new(p).map_err(anyhow::Error::from);
        assert!(unless_gone(&gone, open(&gone)).unwrap().is_none(), "removed: skipped");
        assert!(unless_gone(dir.path(), open(dir.path())).unwrap().is_some());
        let failed: Result<()> = Err(anyhow::anyhow!("refused"));
        assert!(unless_gone(dir.path(), failed).is_err(), "a path that is there and cannot be opened: an error");
    }

    #[test]
    fn a_sandboxed_process_reads_its_own_folder_only_and_reaches_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (session, own) = (root.join("session"), root.join("session/runs/2/seed-42"));
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(root.join("session/runs/1/seed-42")).unwrap();
        std::fs::write(root.join("session/runs/1/seed-42/model.safetensors"), "old").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = Policy {
            deny_read: vec![session.clone()],
            read: vec![own.clone()],
            write: vec![own.clone(), PathBuf::from("/dev/null")],
            unix_sockets_only: true,
            keep_metadata: true,
            no_kernel_objects: true,
            load_mapped_files: true,
            file_capabilities_only: true,
            others_untouched: true,
            ..Policy::default()
        };
        let (own2, session2) = (own.clone(), session.clone());
        // It loads what the test process maps, which other tests' threads map files into.
        let _maps = crate::resident::MAPS.lock().unwrap_or_else(|e| e.into_inner());
        let line = in_sandbox(policy, move || {
            std::fs::write(own2.join("x"), "mine").unwrap();
            assert_eq!(std::fs::read_to_string(own2.join("x")).unwrap(), "mine", "its own folder");
            assert!(std::fs::OpenOptions::new().write(true).open("/dev/null").is_ok(), "a device node granted");

            assert!(denied(std::fs::read(session2.join("runs/1/seed-42/model.safetensors")).map(drop)));
            // (Listing a folder stays possible: the root's rule lets every folder be listed.)
            assert!(denied(std::fs::write(session2.join("planted"), "x")));
            assert!(std::fs::write("/dev/shm/autoresearch-sandbox-test", "x").is_err(), "no other device");
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no TCP connection");
            assert!(std::net::TcpListener::bind("127.0.0.1:0").is_err(), "no TCP port");
            assert!(denied(std::net::UdpSocket::bind("127.0.0.1:0").map(drop)), "no UDP socket");
            assert!(denied(std::net::UdpSocket::bind("[::1]:0").map(drop)), "nor an IPv6 one");
            // Landlock governs no metadata: the seccomp filter refuses it, also on its own files.
            let file = own2.join("x");
            assert!(denied(std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))));
            assert!(denied(std::fs::File::open(&file).unwrap().set_modified(std::time::SystemTime::UNIX_EPOCH)));
            assert!(denied(std::os::unix::fs::chown(&file, None, Some(0))));
            // Nor a netlink socket, whose sock_diag would list every socket's name (`ss -xa`).
            let netlink = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG) };
            assert_eq!((netlink, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EACCES)));
            let pair = std::os::unix::net::UnixStream::pair();
            assert!(pair.is_ok(), "Unix sockets between its own processes stay");
            assert!(std::os::unix::net::UnixDatagram::unbound().is_ok());
            // No kernel object that would outlive it: a key in the user's keyring, System V shared memory, a
            // POSIX message queue.
            let refused = |result: libc::c_long| (result, std::io::Error::last_os_error().raw_os_error());
            let (kind, name, key) = (c"user", c"autoresearch-sandbox-test", b"weights");
            let keyring = unsafe {
                libc::syscall(libc::SYS_add_key, kind.as_ptr(), name.as_ptr(), key.as_ptr(), key.len(), -4i32)
            };
            assert_eq!(refused(keyring), (-1, Some(libc::EACCES)), "no key in the user's keyring");
            let shm = unsafe { libc::shmget(0x5eed, 4096, libc::IPC_CREAT | 0o600) };
            assert_eq!(refused(shm as libc::c_long), (-1, Some(libc::EACCES)), "no System V shared memory");
            let queue = c"/autoresearch-sandbox-test";
            let mq =
                unsafe { libc::syscall(libc::SYS_mq_open, queue.as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600, 0) };
            assert_eq!(refused(mq), (-1, Some(libc::EACCES)), "no POSIX message queue");
            // Nor evict a file's pages from the page cache, or ask which are there.
            use std::os::fd::AsRawFd;
            let lib = std::fs::File::open("/proc/self/exe").unwrap();
            let len = 1 << 16;
            let map =
                unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, lib.as_raw_fd(), 0) };
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; len / 4096];
            let asked = unsafe { libc::mincore(map, len, resident.as_mut_ptr()) };
            assert_eq!(refused(asked as libc::c_long), (-1, Some(libc::EACCES)), "no mincore");
            let evicted = unsafe { libc::madvise(map, len, 21) };
            assert_eq!(refused(evicted as libc::c_long), (-1, Some(libc::EACCES)), "no MADV_PAGEOUT");
            assert_eq!(unsafe { libc::madvise(map, len, libc::MADV_WILLNEED) }, 0, "other advice stays");
            let dropped = unsafe { libc::posix_fadvise(lib.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(dropped, libc::EACCES, "no fadvise DONTNEED");
            assert_eq!(unsafe { libc::posix_fadvise(lib.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) }, 0);
            unsafe { libc::munmap(map, len) };
            // Nor ask by a read that fails where a page is not there (RWF_NOWAIT), or by asynchronous I/O.
            let mut page = [0u8; 4096];
            let iov = libc::iovec { iov_base: page.as_mut_ptr().cast(), iov_len: page.len() };
            let read = |flags| unsafe { libc::preadv2(lib.as_raw_fd(), &iov, 1, 0, flags) as libc::c_long };
            assert_eq!(refused(read(libc::RWF_NOWAIT)), (-1, Some(libc::EACCES)), "no RWF_NOWAIT");
            assert_eq!(read(libc::RWF_HIPRI), 4096, "other reads stay");
            let mut context: libc::c_ulong = 0;
            let aio = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut context) };
            assert_eq!(refused(aio), (-1, Some(libc::EACCES)), "no asynchronous I/O");
            // Nor any call through x32's numbers, which the filter by number would not see (ENOSYS where the kernel
            // has no x32, as most have not: refused before that).
            #[cfg(target_arch = "x86_64")]
            assert_eq!(refused(unsafe { libc::syscall(0x4000_0000 + libc::SYS_getpid) }), (-1, Some(libc::EACCES)));
            // Of the capabilities only those over files' permissions, as root too (and none for another user): no
            // priority above others'. The bounding set can only shrink where the test runs as root.
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let set = |name: &str| {
                let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap();
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
            };
            for name in ["CapEff", "CapPrm"] {
                assert_eq!(set(name) & !u64::from(FILE_CAPABILITIES), 0, "{name}: {status}");
            }
            assert_eq!(set("CapAmb"), 0, "{status}");
            if unsafe { libc::geteuid() } == 0 {
                assert_eq!(set("CapBnd"), u64::from(FILE_CAPABILITIES), "{status}");
            }
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -5) }, -1, "no priority above others'");
            // Its own scheduling it sets; another process's (one of its own user's, here its child) it does not.
            let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
            let pid = other.id();
            let lower = (unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } + 1).min(19);
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, lower) }, 0, "its own priority, lower");
            let others = [
                unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 19) },
                unsafe { libc::setpriority(libc::PRIO_USER, 0, 19) },
                unsafe {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(pid as i32, libc::SCHED_IDLE, &param)
                },
                unsafe {
                    let limit = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
                    libc::prlimit(pid as i32, libc::RLIMIT_CPU, &limit, std::ptr::null_mut())
                },
            ];
            assert_eq!(others, [-1; 4], "another process's priority, its user's, its policy, its limits");
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            assert_eq!(unsafe { libc::prlimit(pid as i32, libc::RLIMIT_CPU, std::ptr::null(), &mut limit) }, 0);
            other.kill().unwrap();
            other.wait().unwrap();
        });
        assert!(line.contains("network closed") && line.contains("no sockets but Unix ones"), "{line}");
        assert!(
            line.contains("no keyrings, System V IPC") && line.contains("page-cache eviction or queries"),
            "{line}"
        );
        assert!(line.contains("files it maps wholly in the page cache"), "{line}");
        assert!(line.contains("no capabilities but over files' permissions"), "{line}");
        assert!(line.contains("no other process's priority, scheduling or limits"), "{line}");
        assert!(line.contains("no signals") && line.contains("no file's permissions, owner, times"), "{line}");
        assert!(std::fs::read_dir(&session).is_ok(), "other threads are not restricted");
        assert!(std::net::UdpSocket::bind("127.0.0.1:0").is_ok(), "nor is their network");
    }

    #[test]
    fn a_process_that_reads_only_a_list_can_neither_read_nor_list_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (mine, other, system) = (root.join("model.safetensors"), root.join("progress.json"), root.join("sys"));
        std::fs::write(&mine, "weights").unwrap();
        std::fs::write(&other, "{}").unwrap();
        std::fs::create_dir(&system).unwrap();
        std::fs::write(system.join("online"), "0-1").unwrap();
        let policy =
            Policy { only_read: Some(vec![mine.clone(), system.clone()]), no_listing: true, ..Policy::default() };
        let (mine2, root2) = (mine.clone(), root.clone());
        let line = in_sandbox(policy, move || {
            assert_eq!(std::fs::read_to_string(&mine2).unwrap(), "weights");
            assert_eq!(std::fs::read_to_string(root2.join("sys/online")).unwrap(), "0-1", "a file in a granted folder");
            assert!(denied(std::fs::read(root2.join("progress.json")).map(drop)), "a file beside it");
            assert!(denied(std::fs::read_dir(&root2).map(drop)), "its folder's listing");
            assert!(denied(std::fs::read_dir(root2.join("sys")).map(drop)), "a granted folder's listing");
            assert!(denied(std::fs::read("/etc/passwd").map(drop)), "a system file");
            assert!(denied(std::fs::read_dir("/usr/lib").map(drop)), "a system folder's listing");
            assert!(denied(std::fs::read(format!("/proc/{}/cmdline", std::os::unix::process::parent_id())).map(drop)));
        });
        assert!(line.contains(&format!("reads only {}", mine.display())) && line.contains("lists no folder"), "{line}");
    }

    #[test]
    fn the_cpu_quota_is_read_where_the_cgroup_lies_and_in_the_groups_above() {
        let files = |cgroup: &str, mounts: &str| -> Vec<String> {
            cgroup_quota_files(cgroup, mounts).iter().map(|p| p.display().to_string()).collect()
        };
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
                  22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert_eq!(
            files("0::/a/b\n", v2),
            ["/sys/fs/cgroup/a/b/cpu.max", "/sys/fs/cgroup/a/cpu.max", "/sys/fs/cgroup/cpu.max"]
        );
        // A container's view of v1: the mount's root is its group, here under a name with a space.
        let v1 = "41 35 0:36 /docker/a\\040b /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n\
                  42 35 0:37 /docker/a\\040b /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
        let cgroup = "4:memory:/docker/a b\n3:cpu,cpuacct:/docker/a b/job\n";
        assert_eq!(
            files(cgroup, v1),
            [
                "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us",
            ]
        );
        // A group outside the mount's root (another namespace's): its top alone, never a path out of it.
        assert_eq!(files("0::/../../etc\n", v2), ["/sys/fs/cgroup/cpu.max"]);
        assert!(files("4:memory:/m\n", v1).is_empty(), "no CPU controller, no quota");
        assert!(files("0::/a\n", "garbage\n").is_empty());
    }

    #[test]
    fn what_libtorch_reads_of_the_system_moves_with_no_other_process() {
        let policy = Policy { only_read: Some(Vec::new()), system_reads: true, ..Policy::default() };
        let parent = std::os::unix::process::parent_id();
        let line = in_sandbox(policy, move || {
            for file in
                ["/proc/self/stat", "/proc/self/status", "/proc/self/maps", "/proc/self/cgroup", "/proc/cpuinfo"]
            {
                assert!(std::fs::read(file).is_ok(), "{file}");
            }
            assert!(std::fs::read("/sys/devices/system/cpu/possible").is_ok());
            assert!(std::fs::read_dir("/sys/devices/system/cpu/cpu0/topology").is_ok(), "the cores' topology");
            let quota = system_reads().into_iter().filter(|p| p.starts_with("/sys/fs/cgroup") && p.exists());
            for file in quota {
                assert!(std::fs::read(&file).is_ok(), "{}", file.display());
            }
            let thread = unsafe { libc::gettid() };
            // Counters that move with other processes (those this machine has), and other processes' own files.
            let moving = [
                "/proc/self/net/unix".to_string(),
                "/proc/self/smaps".into(),
                "/proc/self/pagemap".into(),
                "/proc/self/mountstats".into(),
                "/proc/self/schedstat".into(),
                "/proc/net/sockstat".into(),
                format!("/proc/self/task/{thread}/comm"),
                "/proc/thread-self/comm".into(),
                format!("/proc/{parent}/cmdline"),
                "/proc/stat".into(),
                "/proc/meminfo".into(),
                "/proc/loadavg".into(),
                "/sys/fs/cgroup/memory.current".into(),
                "/sys/fs/cgroup/memory/memory.usage_in_bytes".into(),
                "/sys/fs/cgroup/cpuacct/cpuacct.usage".into(),
                "/sys/devices/system/cpu/cpu0/cpuidle/state0/usage".into(),
                "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq".into(),
            ];
            for file in moving {
                if let Err(e) = std::fs::read(&file) {
                    assert!(e.kind() == std::io::ErrorKind::PermissionDenied || !Path::new(&file).exists(), "{file}");
                } else {
                    panic!("{file} is readable");
                }
            }
            assert!(denied(std::fs::read_dir("/proc/self").map(drop)), "nor is /proc/self listed");
        });
        assert!(line.contains("what libtorch reads of the system"), "{line}");
    }

    #[test]
    fn the_proc_grants_outlast_the_kernel_dropping_the_entries() {
        // The kernel makes new inodes for /proc entries it dropped, which a rule on the old one would not reach.
        // Where this test may make it drop them (root), it does so while the sandboxed thread waits; everywhere,
        // the entries are held open, which keeps them.
        let (applied, dropped) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (tell, wait) = (applied.0, dropped.1);
        let sandboxed = std::thread::spawn(move || {
            Policy { only_read: Some(Vec::new()), system_reads: true, ..Policy::default() }.apply().unwrap();
            tell.send(()).unwrap();
            wait.recv().unwrap();
            (std::fs::read("/proc/self/stat").map(drop), std::fs::read("/proc/cpuinfo").map(drop))
        });
        applied.1.recv().unwrap();
        let can_drop = std::fs::write("/proc/sys/vm/drop_caches", "2").is_ok();
        dropped.0.send(()).unwrap();
        let (stat, cpuinfo) = sandboxed.join().unwrap();
        assert!(stat.is_ok() && cpuinfo.is_ok(), "dropped: {can_drop}: {stat:?} {cpuinfo:?}");
        let held: Vec<PathBuf> = PINNED
            .lock()
            .unwrap()
            .iter()
            .filter_map(|f| std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f))).ok())
            .collect();
        assert!(held.contains(&PathBuf::from(format!("/proc/{}/stat", std::process::id()))), "{held:?}");
        assert!(held.contains(&PathBuf::from("/proc/cpuinfo")), "{held:?}");
    }

    #[test]
    fn a_process_that_reads_beneath_a_list_reads_and_lists_there_but_the_denied_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (data, copy) = (root.join("data"), root.join("elsewhere/val.txt"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        for (f, text) in [(data.join("train.bin"), "train"), (data.join("val.bin"), "val"), (copy.clone(), "val")] {
            std::fs::write(f, text).unwrap();
        }
        let policy =
            Policy { only_read: Some(vec![data.clone()]), deny_read: vec![data.join("val.bin")], ..Policy::default() };
        let (data2, copy2) = (data.clone(), copy.clone());
        let line = in_sandbox(policy, move || {
            assert_eq!(std::fs::read_to_string(data2.join("train.bin")).unwrap(), "train");
            assert_eq!(std::fs::read_dir(&data2).unwrap().count(), 2, "its folder is listed");
            assert!(denied(std::fs::read(data2.join("val.bin")).map(drop)), "the denied file beneath it");
            assert!(denied(std::fs::read(&copy2).map(drop)), "a copy elsewhere");
            assert!(denied(std::fs::read_dir(copy2.parent().unwrap()).map(drop)), "a folder elsewhere");
            assert!(denied(std::fs::read("/etc/passwd").map(drop)), "a system file");
        });
        assert!(line.contains(&format!(
            "reads only {}; {} unreadable",
            data.display(),
            data.join("val.bin").display()
        )));
    }

    #[test]
    fn a_sandbox_turned_off_says_so_and_restricts_nothing() {
        let off = Policy { deny_read: vec![PathBuf::from("/etc")], off: true, ..Policy::default() };
        assert!(off.apply().unwrap().starts_with("sandbox: off (AUTORESEARCH_SANDBOX=off)"));
        assert!(std::fs::read_dir("/etc").is_ok(), "this thread is not restricted");
    }
}
