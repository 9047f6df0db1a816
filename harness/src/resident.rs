//! Every page of the files a process maps (its binary, its libraries) loaded into the page cache before the
//! agent's code runs in it, so that which of them are there says nothing.
//!
//! A process can load a file's pages into the page cache (reading them) but, in the sandbox, neither evict them
//! nor ask which are there: what is left is time, a page read from the disk being slower than one in memory. A
//! red team's model process wrote validation tokens in which pages of libtorch's library it had the kernel drop;
//! without the drop, the pages it reads would do as well, one bit each where the library has pages not yet
//! loaded, for the next training to time (or to count its major page faults). Once every page is in, a read of any
//! takes a page-cache hit's time, whatever an earlier process read. Only memory pressure evicts them again, which a
//! process causes only by filling the memory it may use (the machine's, or its cgroup's).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What [`load_mapped_files`] did.
#[derive(Debug)]
pub struct Loaded {
    /// Files the process maps.
    pub files: usize,
    /// Bytes read: of the pages that were not in the page cache, or the whole file where `mincore` cannot tell.
    pub read: u64,
    /// What it took.
    pub seconds: f64,
}

/// Loads every page of every file the calling process maps into the page cache: the pages `mincore` says are
/// missing, or the whole file where it cannot tell. Before the sandbox, whose filter refuses `mincore`. A file
/// gone since it was mapped, or one this process may not read (a program that may only be run), is left: nothing
/// in the sandbox can read it either.
pub fn load_mapped_files() -> Result<Loaded> {
    let started = std::time::Instant::now();
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let files = mapped_files(&maps);
    let mut read = 0;
    for file in &files {
        read += load(file).with_context(|| format!("loading {} into the page cache", file.display()))?;
    }
    Ok(Loaded { files: files.len(), read, seconds: started.elapsed().as_secs_f64() })
}

/// The files named in a `/proc/<pid>/maps` text, each once: not the anonymous mappings, the kernel's (`[vdso]`),
/// nor a file deleted since it was mapped (a memfd, shared memory).
fn mapped_files(maps: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| {
            // address perms offset dev inode path; the path may hold spaces.
            let path = line.splitn(6, ' ').nth(5)?.trim_start();
            (path.starts_with('/') && !path.ends_with(" (deleted)")).then(|| PathBuf::from(path))
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Loads `path`'s missing pages; the bytes read. Only a regular file, found by its path alone (a device's
/// mapping is not opened), and not one that is gone or that this process may not read.
fn load(path: &Path) -> Result<u64> {
    use std::io::ErrorKind::{NotFound, PermissionDenied};
    let regular = std::fs::metadata(path).map(|m| m.is_file());
    let file = match regular.and_then(|regular| if regular { File::open(path).map(Some) } else { Ok(None) }) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(0),
        Err(e) if matches!(e.kind(), NotFound | PermissionDenied) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    let page = page_size();
    let runs = (len > 0 && can_ask(&file))
        .then(|| missing_pages(&file, len, page))
        .flatten()
        .unwrap_or_else(|| vec![(0, len.div_ceil(page))]);
    read_pages(&file, len, page, &runs)
}

/// Reads the runs (first page, count) of `file` (of `len` bytes), which loads them; the bytes read.
fn read_pages(file: &File, len: u64, page: u64, runs: &[(u64, u64)]) -> Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0;
    for &(first, count) in runs {
        let (mut at, end) = (first * page, ((first + count) * page).min(len));
        while at < end {
            let want = (end - at).min(buffer.len() as u64) as usize;
            let got = match file.read_at(&mut buffer[..want], at) {
                Ok(0) => break, // shortened meanwhile
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            at += got as u64;
            read += got as u64;
        }
    }
    Ok(read)
}

/// Whether `mincore` tells the truth about `file`'s pages: the kernel answers "there" for every page of a file
/// the caller neither owns nor may write, unless it has `CAP_FOWNER`. Asked as the write access the kernel checks
/// (which holds for root, but not on a read-only mount); a file only owned reads whole, which is safe.
fn can_ask(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    // SAFETY: a NUL-terminated path; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// The runs (first page, count) of `file`'s pages not in the page cache; None where it cannot be asked (a mapping
/// refused, `mincore` filtered), and the whole file is read instead.
fn missing_pages(file: &File, len: u64, page: u64) -> Option<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let bytes = usize::try_from(len).ok()?;
    // SAFETY: a fresh read-only private mapping of the whole file, unmapped below; nothing reads through it.
    let map =
        unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    if map == libc::MAP_FAILED {
        return None;
    }
    let mut resident = vec![0u8; bytes.div_ceil(page as usize)];
    // SAFETY: `resident` holds a byte per page of the mapping, as mincore writes.
    let asked = unsafe { libc::mincore(map, bytes, resident.as_mut_ptr()) };
    // SAFETY: the mapping made above, of that length.
    unsafe { libc::munmap(map, bytes) };
    if asked != 0 {
        return None;
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, byte) in resident.iter().enumerate() {
        if byte & 1 == 0 {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == i as u64 => *count += 1,
                _ => runs.push((i as u64, 1)),
            }
        }
    }
    Some(runs)
}

fn page_size() -> u64 {
    // SAFETY: sysconf with a constant name.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}

/// Held by the tests that map files or load what the test process maps: they run as threads of one process.
#[cfg(test)]
pub(crate) static MAPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapped_files_are_named_once_without_the_kernels_or_deleted_ones() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 123 /usr/bin/autoresearch-train
55d0a0001000-55d0a0002000 r-xp 00001000 fd:01 123 /usr/bin/autoresearch-train
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
7f0000001000-7f0000002000 r--p 00000000 fd:01 456                        /opt/torch/lib/libtorch cpu.so
7f0000002000-7f0000003000 r--p 00000000 fd:01 789                        /tmp/old.so (deleted)
7f0000003000-7f0000004000 rw-s 00000000 00:01 790                        /memfd:weights (deleted)
7f0000004000-7f0000005000 rw-s 00000000 00:01 791                        /dev/zero (deleted)
7f0000005000-7f0000006000 rw-p 00000000 00:00 0                          [anon:glibc]
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            mapped_files(maps),
            vec![PathBuf::from("/opt/torch/lib/libtorch cpu.so"), PathBuf::from("/usr/bin/autoresearch-train")]
        );
    }

    /// A folder on a file system that drops pages when told to (not tmpfs, which keeps every page).
    fn on_a_disk() -> tempfile::TempDir {
        let tmp = std::env::temp_dir();
        // SAFETY: statfs fills the structure it is given.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap();
        let on_tmpfs = unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0 && fs.f_type == libc::TMPFS_MAGIC;
        // Where the temporary folder is on tmpfs, beside the crate's sources.
        if on_tmpfs { tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")) } else { tempfile::tempdir() }.unwrap()
    }

    #[test]
    fn a_mapped_files_pages_dropped_from_the_page_cache_are_loaded_again() {
        let _maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = on_a_disk();
        let path = dir.path().join("library.so");
        let page = page_size();
        std::fs::write(&path, vec![7u8; (64 * page) as usize]).unwrap();
        let file = File::open(&path).unwrap();
        // Written pages are dirty: written back first, then dropped.
        file.sync_all().unwrap();
        let evict = || {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on a descriptor this test holds.
            assert_eq!(unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        };
        // This test made the file, so mincore tells.
        assert!(can_ask(&file));
        let missing = || missing_pages(&file, 64 * page, page).unwrap();
        let is_missing =
            |runs: &[(u64, u64)], p: u64| runs.iter().any(|&(first, count)| first <= p && p < first + count);
        evict();
        assert_eq!(missing(), vec![(0, 64)], "every page dropped");
        // A read loads its page (and those the kernel reads ahead, after it), not those before it.
        let mut page_ten = vec![0u8; page as usize];
        file.read_at(&mut page_ten, 10 * page).unwrap();
        let after_one_read = missing();
        assert!(is_missing(&after_one_read, 0) && !is_missing(&after_one_read, 10), "{after_one_read:?}");
        assert!(load(&path).unwrap() > 0, "the missing pages read");
        assert_eq!(missing(), Vec::new(), "every page is there");
        assert_eq!(load(&path).unwrap(), 0, "nothing left to read");
        // Where mincore cannot tell, the whole file is read.
        evict();
        assert_eq!(read_pages(&file, 64 * page, page, &[(0, 64)]).unwrap(), 64 * page);
        assert_eq!(missing(), Vec::new());
        // A file that is gone, or not a regular one, is left.
        assert_eq!(load(&dir.path().join("gone.so")).unwrap(), 0);
        assert_eq!(load(Path::new("/dev/zero")).unwrap(), 0);
    }

    #[test]
    fn this_process_maps_its_own_binary_and_loads_it_all() {
        let _maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = load_mapped_files().unwrap();
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert!(mapped_files(&std::fs::read_to_string("/proc/self/maps").unwrap()).contains(&exe));
        assert!(loaded.files >= 2, "the binary and libc at least: {loaded:?}");
        // Every page of its binary is there (the test binary is this user's own: mincore tells).
        let (binary, len) = (File::open(&exe).unwrap(), std::fs::metadata(&exe).unwrap().len());
        assert!(can_ask(&binary));
        assert_eq!(missing_pages(&binary, len, page_size()), Some(Vec::new()));
    }
}
