//! The process's allocator: the system's, with the large blocks freed lately kept for the next
//! allocation of the same size. glibc maps every block past its mmap threshold (32 MB at most,
//! see `init_process`) afresh and unmaps it on free, so every op on a 64 MB tensor paid for a
//! new mapping and for the kernel zeroing its 16,384 pages: half of a large param's step.
//! Tensors of one shape are freed and allocated again on every step, so a handful of blocks
//! serves them all.
//!
//! The cache never raises peak memory: the large blocks held plus those kept stay within the
//! most the program has held at once, so at its peak nothing is kept. A block that would go
//! past that goes back to the system (the one freed first, when several are kept).
//!
//! Zeroed large blocks are the exception: they are always fresh mappings, which cost no memory
//! until written (reads see the kernel's zero page), and go back to the system when freed. The
//! ones candle asks for are the zeros every gradient starts from in a backward pass, read once
//! by the first addition and dropped: a cached block would have been a whole param's size more.
//! The price falls on code that asks for zeros and then writes them all (candle's own matmul,
//! gather and convolution outputs past 32 MB): its pages are faulted in afresh, and, not being
//! counted as held, they may sit beside cached blocks past the program's own peak. This crate's
//! products fill their outputs instead of asking for zeros.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks from this size up are cached: glibc's largest mmap threshold, above which it maps
/// each block afresh (smaller blocks it reuses from its heap itself).
pub const LARGE: usize = 32 << 20;
/// Freed large blocks kept at most; when all are taken, the one freed first goes back.
const SLOTS: usize = 8;

/// A freed block, kept with the layout it was allocated with.
#[derive(Debug, Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    /// When it was freed (a count of the blocks kept before it).
    freed: u64,
}

impl Block {
    fn layout(&self) -> Layout {
        // SAFETY: the size and alignment of a layout a block was allocated with.
        unsafe { Layout::from_size_align_unchecked(self.size, self.align) }
    }

    /// Gives the block back to the system.
    fn release(&self) {
        // SAFETY: a `System` block with the layout it was allocated with, no longer cached.
        unsafe { System.dealloc(self.addr as *mut u8, self.layout()) };
    }
}

/// Blocks taken out of the cache, to release once its lock is let go.
type Released = [Option<Block>; SLOTS];

struct Cache {
    blocks: [Option<Block>; SLOTS],
    /// Addresses of the fresh zeroed blocks handed out (not counted as held).
    fresh: Vec<usize>,
    /// Blocks kept so far: the clock that orders them.
    kept: u64,
    /// Bytes of large blocks the program holds now, and the most it has held at once.
    held: usize,
    peak: usize,
}

impl Cache {
    fn cached(&self) -> usize {
        self.blocks.iter().flatten().map(|b| b.size).sum()
    }

    /// Counts `grown` more bytes held and `shrunk` fewer, then takes out the blocks kept first
    /// until held plus kept is within the peak.
    fn hold(&mut self, grown: usize, shrunk: usize) -> Released {
        self.held = (self.held + grown).saturating_sub(shrunk);
        self.peak = self.peak.max(self.held);
        let mut out = [None; SLOTS];
        for slot in &mut out {
            if self.held + self.cached() <= self.peak {
                break;
            }
            let oldest = (0..SLOTS)
                .filter(|&i| self.blocks[i].is_some())
                .min_by_key(|&i| self.blocks[i].map_or(0, |b| b.freed));
            *slot = oldest.and_then(|i| self.blocks[i].take());
        }
        out
    }
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [None; SLOTS],
    fresh: Vec::new(),
    kept: 0,
    held: 0,
    peak: 0,
});

/// The allocator: [`System`] with the large-block cache in front.
pub struct BlockCache;

#[global_allocator]
static GLOBAL: BlockCache = BlockCache;

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // Nothing panics while holding it; a poisoned lock still guards consistent slots.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn release(blocks: &Released) {
    blocks.iter().flatten().for_each(Block::release);
}

/// The size of a block that counts as large, else 0.
fn large(size: usize) -> usize {
    if size >= LARGE { size } else { 0 }
}

/// A large block for `layout`: the one of exactly its size and alignment freed last, when one
/// is kept, else the system's.
fn take(layout: Layout) -> *mut u8 {
    let hit = {
        let mut c = cache();
        let slot = c
            .blocks
            .iter_mut()
            .filter(|b| b.is_some_and(|b| b.size == layout.size() && b.align == layout.align()))
            .max_by_key(|b| b.map_or(0, |b| b.freed));
        let hit = slot.and_then(Option::take);
        if hit.is_some() {
            // The block only moves from kept to held.
            c.held += layout.size();
            c.peak = c.peak.max(c.held);
        }
        hit
    };
    match hit {
        Some(b) => b.addr as *mut u8,
        None => {
            // SAFETY: the caller's layout, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                let out = cache().hold(layout.size(), 0);
                release(&out);
            }
            p
        }
    }
}

/// A fresh zeroed large block from the system (glibc maps it anew and does not write it).
fn take_zeroed(layout: Layout) -> *mut u8 {
    // SAFETY: the caller's layout, passed on.
    let p = unsafe { System.alloc_zeroed(layout) };
    if !p.is_null() {
        cache().fresh.push(p as usize);
    }
    p
}

/// Whether `ptr` is a fresh zeroed block, no longer tracked as one once this says so.
fn was_fresh(ptr: *mut u8) -> bool {
    let mut c = cache();
    let found = c.fresh.iter().position(|&a| a == ptr as usize);
    found.map(|i| c.fresh.swap_remove(i)).is_some()
}

/// Keeps a freed large block, giving back the one freed first when every slot is taken.
fn keep(ptr: *mut u8, layout: Layout) {
    let out = {
        let mut c = cache();
        c.kept += 1;
        let block = Block {
            addr: ptr as usize,
            size: layout.size(),
            align: layout.align(),
            freed: c.kept,
        };
        let slot = c
            .blocks
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                (0..SLOTS)
                    .min_by_key(|&i| c.blocks[i].map_or(0, |b| b.freed))
                    .unwrap_or(0)
            });
        let displaced = c.blocks[slot].replace(block);
        (displaced, c.hold(0, layout.size()))
    };
    out.0.iter().for_each(Block::release);
    release(&out.1);
}

/// Gives every kept block back to the system: for a caller done with large tensors whose
/// memory figures should not count them.
pub fn release_all() {
    let kept = std::mem::replace(&mut cache().blocks, [None; SLOTS]);
    release(&kept);
}

/// Bytes this process can still take: the system's available memory (`MemAvailable`), or less
/// under an address-space limit (`ulimit -v`). Past it an allocation aborts the process (or the
/// kernel kills it), so tensors that would not fit are refused first. The blocks the cache
/// keeps go back first: they serve only their own size. None where it cannot be read (then
/// nothing is refused).
pub fn free_memory() -> Option<u64> {
    release_all();
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let available = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?
            * 1024;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: writes only `limit`.
        let limited = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY;
        let room = match limited {
            true => {
                // The first field of statm: the address space in use, in pages.
                let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
                let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
                // SAFETY: sysconf reads a constant.
                let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
                available.min(limit.rlim_cur.saturating_sub(pages * page))
            }
            false => available,
        };
        Some(cgroup_room().map_or(room, |c| room.min(c)))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// What the process's memory cgroup (a container's limit) leaves: `MemAvailable` is the
/// host's, and past the cgroup's limit the kernel kills the process. None without a limit.
#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // Inside a container the hierarchy is often mounted at its own cgroup: the path that
    // /proc/self/cgroup names is then the mount's root.
    let read = |dir: &str, path: &str, file: &str| -> Option<u64> {
        [format!("{dir}{path}/{file}"), format!("{dir}/{file}")]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    };
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (limit, usage) = match controllers {
            // v2: one hierarchy; "max" (no limit) does not parse.
            "" => (
                read("/sys/fs/cgroup", path, "memory.max"),
                read("/sys/fs/cgroup", path, "memory.current"),
            ),
            c if c.split(',').any(|c| c == "memory") => (
                read("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes"),
                read("/sys/fs/cgroup/memory", path, "memory.usage_in_bytes"),
            ),
            _ => continue,
        };
        // v1 writes "no limit" as a number near 2^63.
        if let (Some(limit), Some(usage)) = (limit.filter(|&l| l < 1 << 60), usage) {
            return Some(limit.saturating_sub(usage));
        }
    }
    None
}

// SAFETY: every block handed out comes from `System` with the layout asked for (a cached block
// is reused only for exactly its own size and alignment), and goes back to `System` with it.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match layout.size() >= LARGE {
            true => take(layout),
            // SAFETY: the caller's layout, passed on.
            false => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match layout.size() >= LARGE {
            true => take_zeroed(layout),
            // SAFETY: the caller's layout, passed on.
            false => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match layout.size() >= LARGE {
            // SAFETY: a `System` block with the layout it was allocated with.
            true if was_fresh(ptr) => unsafe { System.dealloc(ptr, layout) },
            true => keep(ptr, layout),
            // SAFETY: a block from `System` with the layout it was allocated with.
            false => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A fresh block is not counted as held: resized, it counts as a new one.
        let fresh = layout.size() >= LARGE && was_fresh(ptr);
        let old = if fresh { 0 } else { large(layout.size()) };
        // SAFETY: every block is a `System` block with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() && fresh {
            // The caller keeps the block as it was.
            cache().fresh.push(ptr as usize);
        }
        let new = large(new_size);
        if !p.is_null() && (old, new) != (0, 0) {
            let out = cache().hold(new, old);
            release(&out);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_block_serves_the_next_allocation_but_a_zeroed_one_is_fresh() {
        let layout = Layout::from_size_align(LARGE + 4096, 64).expect("a layout");
        let a = BlockCache;
        let fresh = |p: *mut u8| cache().fresh.contains(&(p as usize));
        // SAFETY: allocated, written within bounds and freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xAB, layout.size());
            a.dealloc(p, layout);
            let r = a.alloc(layout);
            assert_eq!(r, p, "the kept block serves the next allocation");
            a.dealloc(r, layout);
            let q = a.alloc_zeroed(layout);
            assert!(fresh(q), "a zeroed block comes fresh from the system");
            let bytes = std::slice::from_raw_parts(q, layout.size());
            assert!(bytes.iter().all(|&b| b == 0));
            a.dealloc(q, layout);
            let kept = cache()
                .blocks
                .iter()
                .flatten()
                .any(|b| b.addr == q as usize);
            assert!(!fresh(q) && !kept, "a fresh block goes back to the system");
        }
    }
}
