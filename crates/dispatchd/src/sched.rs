//! Short CPU slices for every thread of the server.
//!
//! A ride waits on four threads in turn (a gRPC worker, the engine, the
//! commit stage, the delivery stage), and each sleeps until it has work. On
//! a busy machine the one that wakes waits for whatever runs on the core to
//! use up its slice: 1.4 ms by default on a two-core machine, at every hop.
//! Linux's EEVDF scheduler (6.12 and later) lets a thread ask for a
//! shorter slice (`sched_setattr` with `sched_runtime`, no privilege
//! needed): it is then picked sooner when it wakes, and gives the core up
//! sooner, with the same share of the CPU as before (its weight, the nice
//! value, is unchanged). Asked for on the main thread before any other
//! starts, so every thread of the process inherits it. Older kernels keep
//! their own slice, and the log says so.

use std::io;
use std::time::Duration;

/// The kernel's `struct sched_attr`, version 1 (56 bytes).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// `SCHED_OTHER`, the policy whose slice can be set.
const SCHED_OTHER: u32 = 0;

/// The calling thread's scheduling attributes.
#[allow(unsafe_code)]
fn get() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: pid 0 is the calling thread; the kernel writes at most `size`
    // bytes into `attr`, a `repr(C)` struct of exactly that size laid out as
    // its `struct sched_attr`, which lives across the call.
    let done = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0) };
    if done == 0 { Ok(attr) } else { Err(io::Error::last_os_error()) }
}

/// Sets the calling thread's scheduling attributes.
#[allow(unsafe_code)]
fn set(attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the kernel reads `attr.size`
    // bytes of `attr`, which is that size and lives across the call.
    let done = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(attr), 0) };
    if done == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The calling thread's slice, in nanoseconds, as the kernel reports it.
pub fn slice_ns() -> io::Result<u64> {
    get().map(|attr| attr.runtime)
}

/// What asking for a slice came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The thread runs with the slice asked for (in nanoseconds).
    Set(u64),
    /// The kernel kept a slice of its own (before 6.12 it has none per
    /// thread).
    Kept(u64),
    /// The thread runs under another policy (real-time, chosen by whoever
    /// started the server): left alone.
    OtherPolicy(u32),
}

/// Asks for `slice` for the calling thread (and so for every thread it
/// starts from now on).
pub fn ask(slice: Duration) -> io::Result<Outcome> {
    let mut attr = get()?;
    if attr.policy != SCHED_OTHER {
        return Ok(Outcome::OtherPolicy(attr.policy));
    }
    let asked = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.runtime = asked;
    // Keep the nice value read above; no utilization clamps.
    attr.flags = 0;
    set(&attr)?;
    let now = slice_ns()?;
    Ok(if now == asked { Outcome::Set(now) } else { Outcome::Kept(now) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_asking_for_a_short_slice_gets_it_and_the_threads_it_starts_inherit_it() {
        let outcome = std::thread::spawn(|| {
            let outcome = ask(Duration::from_micros(100)).unwrap_or_else(|e| panic!("sched_setattr: {e}"));
            let child = std::thread::spawn(slice_ns).join().unwrap_or_else(|_| panic!("child panicked"));
            (outcome, child.unwrap_or_else(|e| panic!("sched_getattr: {e}")))
        })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
        assert_eq!(outcome, (Outcome::Set(100_000), 100_000));
    }
}
