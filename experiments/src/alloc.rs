//! Keep freed tensor memory in the process.
//!
//! Burn's CPU backend allocates a fresh buffer for nearly every op and frees it soon after. With
//! glibc's defaults every block above the (dynamic, at most 32 MiB) mmap threshold is a fresh
//! `mmap` and every free at the top of the heap may be trimmed back to the kernel, so the next
//! tensor of that size page-faults its memory in again, zeroed by the kernel. On the `small`
//! benchmark preset a training step took 2.5 M page faults and a fifth of its CPU time in the
//! kernel. [`keep_freed_memory`] makes glibc serve every block from its heaps and never trim
//! them: the same step then takes about a quarter of the faults (`README.md`, Benchmarks).

/// Tell glibc's malloc to serve large blocks from its heaps and not to give freed memory back
/// (unless the user set `MALLOC_*` tuning in the environment already). Call it first in `main`,
/// before any thread starts. No-op on other platforms and allocators.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_tuned = std::env::vars_os().any(|(k, _)| {
            k.to_str()
                .is_some_and(|k| k.starts_with("MALLOC_") || k == "GLIBC_TUNABLES")
        });
        if user_tuned {
            return;
        }
        // SAFETY: mallopt only changes malloc's parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        }
    }
}

/// Give the memory malloc holds free back to the kernel (`malloc_trim`), e.g. before measuring
/// a peak. No-op on other platforms and allocators.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
