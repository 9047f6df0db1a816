//! Every page of the files a process maps (its binary, its libraries) loaded into the page cache before the
//! agent's code runs in it, so that which of them are there says nothing.
//!
//! A process can load a file's pages into the page cache (reading them) but, in the sandbox, neither evict them
//! nor ask which are there: what is left is time, a page read from the disk being slower than one in memory. A
//! red team's model process wrote validation tokens in which pages of libtorch's library it had the kernel drop;
//! without the drop, the pages it reads would do as well, one bit each where the library has pages not yet
//! loaded, for the next training to time. Once every page is in, a read of any takes a page-cache hit's time,
//! whatever an earlier process read. Only memory pressure evicts them again, which a process causes only by filling
//! the machine's memory.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What [`load_mapped_files`] did.
#[derive(Debug)]
pub struct Loaded {
    /// Files the process maps.
    pub files: usize,
    /// Bytes of them that were not in the page cache, read now.
    pub read: u64,
    /// What it took.
    pub seconds: f64,
}

/// Loads every page of every file the calling process maps into the page cache: the pages `mincore` says are
/// missing, or the whole file where `mincore` cannot tell (the kernel answers "there" for every page of a file
/// the caller neither owns nor may write). Before the sandbox, which refuses `mincore`.
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
/// nor a file deleted since it was mapped.
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

/// Loads `path`'s missing pages; the bytes read. A file that is not a regular one (a device's mapping) is left.
fn load(path: &Path) -> Result<u64> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(0);
    }
    let page = page_size();
    let runs = missing_pages(&file, meta.len(), page, can_ask(&file, &meta))?
        .unwrap_or_else(|| vec![(0, meta.len().div_ceil(page))]);
    read_pages(&file, meta.len(), page, &runs)
}

/// Reads the runs (first page, count) of `file` (of `len` bytes), which loads them; the bytes read.
fn read_pages(file: &File, len: u64, page: u64, runs: &[(u64, u64)]) -> Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0;
    for &(first, count) in runs {
        let (mut at, end) = (first * page, ((first + count) * page).min(len));
        while at < end {
            let want = (end - at).min(buffer.len() as u64) as usize;
            let got = file.read_at(&mut buffer[..want], at)?;
            if got == 0 {
                break; // shortened meanwhile
            }
            at += got as u64;
            read += got as u64;
        }
    }
    Ok(read)
}

/// Whether `mincore` tells this process the truth about `file`'s pages: the kernel's rule is that the caller owns
/// the file, may write it, or has `CAP_FOWNER` (root).
fn can_ask(file: &File, meta: &std::fs::Metadata) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: plain calls on a descriptor this function borrows; they change nothing.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || meta.uid() == euid || {
        let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
        // SAFETY: a NUL-terminated path; faccessat only reads it.
        unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
    }
}

/// The runs (first page, count) of `file`'s pages not in the page cache; None where `mincore` cannot tell.
fn missing_pages(file: &File, len: u64, page: u64, can_ask: bool) -> Result<Option<Vec<(u64, u64)>>> {
    use std::os::fd::AsRawFd;
    if !can_ask {
        return Ok(None);
    }
    let pages = len.div_ceil(page) as usize;
    // SAFETY: a fresh read-only shared mapping of the whole file, unmapped below; nothing reads through it.
    let map = unsafe {
        libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("mapping it");
    }
    let mut resident = vec![0u8; pages];
    // SAFETY: `resident` holds a byte per page of the mapping, as mincore writes.
    let asked = unsafe { libc::mincore(map, len as usize, resident.as_mut_ptr()) };
    let error = std::io::Error::last_os_error();
    // SAFETY: the mapping made above, of that length.
    unsafe { libc::munmap(map, len as usize) };
    if asked != 0 {
        return Err(error).context("asking which of its pages are in the page cache");
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
    Ok(Some(runs))
}

fn page_size() -> u64 {
    // SAFETY: sysconf with a constant name.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapped_files_are_named_once_without_the_kernels_or_deleted_ones() {
        let maps = "\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 123 /usr/bin/autoresearch-train
55d0a0001000-55d0a0002000 r-xp 00001000 fd:01 123 /usr/bin/autoresearch-train
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000001000-7f0000002000 r--p 00000000 fd:01 456                        /opt/torch/lib/libtorch cpu.so
7f0000002000-7f0000003000 r--p 00000000 fd:01 789                        /tmp/old.so (deleted)
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            mapped_files(maps),
            vec![PathBuf::from("/opt/torch/lib/libtorch cpu.so"), PathBuf::from("/usr/bin/autoresearch-train")]
        );
    }

    #[test]
    fn a_mapped_files_pages_dropped_from_the_page_cache_are_loaded_again() {
        // In the crate's folder, on a disk: a temporary folder may be on tmpfs, which never drops a page.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("library.so");
        let page = page_size();
        std::fs::write(&path, vec![7u8; (64 * page) as usize]).unwrap();
        let file = File::open(&path).unwrap();
        // Written pages are dirty: written back first, then dropped (this test owns the file, so mincore tells).
        file.sync_all().unwrap();
        let drop = || {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on a descriptor this test holds.
            assert_eq!(unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
        };
        let missing = |file: &File| missing_pages(file, 64 * page, page, true).unwrap().unwrap();
        drop();
        assert_eq!(missing(&file), vec![(0, 64)], "every page dropped");
        // A read loads its page (and those the kernel reads ahead, after it).
        let mut page_ten = vec![0u8; page as usize];
        file.read_at(&mut page_ten, 10 * page).unwrap();
        let after_one_read = missing(&file);
        assert_eq!(after_one_read.first(), Some(&(0, 10)), "{after_one_read:?}");
        assert_eq!(load(&path).unwrap(), after_one_read.iter().map(|r| r.1 * page).sum::<u64>());
        assert_eq!(missing(&file), Vec::new(), "every page is there");
        assert_eq!(load(&path).unwrap(), 0, "nothing left to read");
        // Where mincore cannot tell, the whole file is read.
        drop();
        assert_eq!(missing_pages(&file, 64 * page, page, false).unwrap(), None);
        assert_eq!(read_pages(&file, 64 * page, page, &[(0, 64)]).unwrap(), 64 * page);
        assert_eq!(missing(&file), Vec::new());
    }

    #[test]
    fn this_process_maps_its_own_binary_and_loads_it_all() {
        let loaded = load_mapped_files().unwrap();
        assert!(loaded.files >= 1, "{loaded:?}");
        assert_eq!(load_mapped_files().unwrap().read, 0, "a second time, nothing is missing");
    }
}
