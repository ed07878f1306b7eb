//! Transparent huge pages for the memory a search walks.
//!
//! An HNSW query hops between graph nodes spread over hundreds of megabytes, and every
//! hop is a TLB miss on 4 KiB pages. USearch keeps its nodes and vectors in arenas of
//! its own (anonymous `mmap`s of 8 MiB and more, doubling), which glibc's
//! `glibc.malloc.hugetlb` tunable does not reach, and most kernels run transparent huge
//! pages in `madvise` mode, where only memory that asks for them gets them.
//! [`collapse_dense_anonymous`] asks: it walks `/proc/self/maps` and, in every private
//! writable anonymous mapping of at least `min_bytes`, finds with `mincore` the 2 MiB
//! chunks that are almost wholly resident (so that backing them with huge pages costs
//! next to no memory) and calls `madvise(MADV_HUGEPAGE)` (the range may keep huge pages)
//! and `madvise(MADV_COLLAPSE)` (Linux 6.1: its pages are copied into huge pages now,
//! synchronously) on each run of them. (By chunk, not by mapping: USearch's arenas double
//! and are about half filled, so whole mappings are rarely dense.)
//!
//! Everything here is best effort: on another OS, a kernel with pages other than 4 KiB,
//! an older kernel, or with THP set to `never`, it does nothing and says so in its
//! [`HugePages`] answer.

/// What [`collapse_dense_anonymous`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePages {
    /// Runs of dense 2 MiB chunks advised.
    pub regions: usize,
    /// Bytes of those runs (what was advised).
    pub advised_bytes: usize,
    /// Bytes the kernel collapsed into huge pages (`MADV_COLLAPSE` succeeded).
    pub collapsed_bytes: usize,
}

/// The smallest mapping [`collapse_dense_anonymous`] is asked to look at by the store
/// and its benchmark (USearch's arenas start at 8 MiB).
pub const MIN_MAPPING_BYTES: usize = 8 << 20;

/// Size of a transparent huge page on x86-64 and most arm64 kernels.
#[cfg(target_os = "linux")]
const HUGE: usize = 2 << 20;

#[cfg(target_os = "linux")]
const MADV_COLLAPSE: libc::c_int = 25;

/// Advises huge pages for, and collapses, the resident parts of the process's private
/// writable anonymous mappings of at least `min_bytes`: every 2 MiB-aligned chunk of
/// such a mapping of which at least 90% of the 4 KiB pages are resident (`mincore`), so
/// that backing it with a huge page costs at most 10% more memory. Returns what it did;
/// never fails (a range the kernel refuses is skipped).
#[allow(unsafe_code)] // sysconf, mincore and madvise; see the SAFETY comments
pub fn collapse_dense_anonymous(min_bytes: usize) -> HugePages {
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return HugePages::default();
        };
        const PAGE: usize = 4096;
        // SAFETY: sysconf only reads a system constant.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE as libc::c_long {
            return HugePages::default();
        }
        let mut out = HugePages::default();
        let mut resident = Vec::new();
        for (start, end) in anonymous(&maps, min_bytes.max(HUGE)) {
            let lo = start.next_multiple_of(HUGE);
            let hi = end / HUGE * HUGE;
            if hi <= lo {
                continue;
            }
            resident.clear();
            resident.resize((hi - lo) / PAGE, 0u8);
            // SAFETY: [lo, hi) lies inside a mapping of this process (read from its own
            // maps a moment ago) and `resident` has one byte per 4 KiB page of it, as
            // mincore requires. If the range was unmapped meanwhile, mincore fails with
            // ENOMEM and writes nothing.
            let ok = unsafe {
                libc::mincore(lo as *mut libc::c_void, hi - lo, resident.as_mut_ptr()) == 0
            };
            if !ok {
                continue;
            }
            let dense: Vec<bool> = resident
                .chunks(HUGE / PAGE)
                .map(|c| c.iter().filter(|&&b| b & 1 == 1).count() * 10 >= c.len() * 9)
                .collect();
            let mut at = lo;
            for run in dense.chunk_by(|x, y| x == y) {
                let (a, len) = (at, run.len() * HUGE);
                at += len;
                if !run[0] {
                    continue;
                }
                out.regions += 1;
                out.advised_bytes += len;
                // SAFETY: as above, [a, a + len) is inside the mapping. Neither advice
                // changes the contents of the memory: MADV_HUGEPAGE sets a flag on the
                // range, MADV_COLLAPSE copies its pages into huge pages in place; on a
                // range unmapped meanwhile both fail with ENOMEM and do nothing.
                unsafe {
                    let p = a as *mut libc::c_void;
                    if libc::madvise(p, len, libc::MADV_HUGEPAGE) == 0
                        && libc::madvise(p, len, MADV_COLLAPSE) == 0
                    {
                        out.collapsed_bytes += len;
                    }
                }
            }
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = min_bytes;
        HugePages::default()
    }
}

/// The `[start, end)` address ranges of the private writable anonymous mappings of at
/// least `min_bytes` in `/proc/self/maps` text.
#[cfg(any(target_os = "linux", test))]
fn anonymous(maps: &str, min_bytes: usize) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // "start-end perms offset dev inode [path]"
            let mut f = line.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            let perms = f.next()?;
            let inode = f.nth(2)?;
            let path = f.next();
            let anonymous = inode == "0" && matches!(path, None | Some("[heap]"));
            (anonymous
                && perms.starts_with("rw")
                && perms.ends_with('p')
                && b.saturating_sub(a) >= min_bytes)
                .then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
7f0000000000-7f0001000000 rw-p 00000000 00:00 0 
7f0002000000-7f0003000000 r--p 00000000 00:00 0 
7f0003000000-7f0004000000 rw-p 00000000 08:01 1234    /data/file
7f0004000000-7f0004100000 rw-p 00000000 00:00 0 
55d000000000-55d002000000 rw-p 00000000 00:00 0                          [heap]
7f0005000000-7f0006000000 rw-s 00000000 00:01 77    /dev/zero (deleted)
7ffc00000000-7ffc01000000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn picks_only_large_private_writable_anonymous_mappings() {
        let got = anonymous(MAPS, 8 << 20);
        assert_eq!(
            got,
            vec![
                (0x7f00_0000_0000, 0x7f00_0100_0000),
                (0x55d0_0000_0000, 0x55d0_0200_0000)
            ]
        );
    }

    #[test]
    fn collapsing_keeps_the_contents() {
        // 32 MiB written through: after the advice every byte reads back the same.
        let v: Vec<u64> = (0..(4u64 << 20))
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect();
        let r = collapse_dense_anonymous(16 << 20);
        assert!(r.collapsed_bytes <= r.advised_bytes);
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9e37_79b9)));
    }
}
