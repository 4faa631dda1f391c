//! Heap bytes per user of what a cycle holds at 100k users, measured by a counting
//! allocator on the synthetic organisation (`dirsync::plan::synthetic`): the portal users
//! as listed, the directory users, the state's baselines, and the peak while planning.
//!
//! `cargo bench --bench memory` (`DIRSYNC_USERS=30000` for another size)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use dirsync::plan::{self, synthetic::Synthetic};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The bytes `f` frees.
fn freed(f: impl FnOnce()) -> usize {
    let before = live();
    f();
    before.saturating_sub(live())
}

fn main() {
    let n: usize = std::env::var("DIRSYNC_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let start = live();
    let mut world = match Synthetic::new(n) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot build the synthetic organisation: {e}");
            std::process::exit(1);
        }
    };
    let inputs = live() - start;

    let before_plan = live();
    PEAK.store(before_plan, Ordering::Relaxed);
    let plan = plan::compute(&world.input());
    let planning_peak = PEAK.load(Ordering::Relaxed) - before_plan;
    let changes = plan.changes.len();
    let plan_bytes = freed(|| drop(plan));

    // `DIRSYNC_PLANS=k`: plan k times more (for CPU time, e.g. under `perf stat`).
    let again: usize = std::env::var("DIRSYNC_PLANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..again {
        std::hint::black_box(plan::compute(&world.input()));
    }

    let portal = freed(|| drop(std::mem::take(&mut world.portal)));
    let directory = freed(|| drop(std::mem::take(&mut world.directory)));
    let groups = freed(|| drop(std::mem::take(&mut world.groups)));
    let state = freed(|| drop(std::mem::take(&mut world.state)));
    let links = freed(|| drop(std::mem::take(&mut world.links)));

    let per_user = |bytes: usize| bytes as f64 / n as f64;
    println!("heap bytes per user, {n} users, {changes} changes");
    for (what, bytes) in [
        ("portal users, as listed", portal),
        ("directory users", directory),
        ("directory groups", groups),
        ("state baselines", state),
        ("state links (anchor -> portal id)", links),
        ("all inputs", inputs),
        ("the plan (kept until recorded)", plan_bytes),
        ("peak while planning, above the inputs", planning_peak),
    ] {
        println!(
            "  {what:<40} {:>9.0} B/user {:>8.1} MiB",
            per_user(bytes),
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
}
