//! Bytes the engine holds per driver: a counting allocator around the
//! system one, an engine filled with a seeded city, and the difference.
//! Run: `cargo bench --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use dispatch_core::engine::Config;
use dispatch_testkit::city::{CityShape, engine_with_drivers};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let mut out = std::io::stdout().lock();
    for drivers in [10_000, 250_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let (engine, placed) = engine_with_drivers(1, &CityShape::seoul(), drivers, Config::default());
        // The fixture's own list of positions is not the engine's.
        let fixture = placed.capacity() * std::mem::size_of_val(&placed[0]);
        let held = LIVE.load(Ordering::Relaxed) - before - fixture;
        let _ = writeln!(out, "engine/{drivers}_drivers: {} bytes per driver ({} MiB)", held / drivers, held >> 20);
        drop((engine, placed));
    }
}
