//! Two pieces of one step side by side, when they are big enough to be
//! worth a thread (the machines this runs on have a few cores; a feed of a
//! million prefixes takes every step from seconds to under one).

/// Work below this many items runs on the calling thread: spawning costs
/// tens of microseconds, more than a small feed's whole step.
pub const THREAD_WORTHY: usize = 20_000;

/// Runs `a` here and `b` on a second thread when `items` (their work,
/// together) is at least [`THREAD_WORTHY`]; else both here. A panic in `b`
/// is carried over.
pub fn join<A, B>(items: usize, a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B)
where
    B: Send,
{
    if items < THREAD_WORTHY {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let b = scope.spawn(b);
        let a = a();
        (
            a,
            b.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    })
}
