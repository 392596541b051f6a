//! Two pieces of one step side by side, when they are big enough to be
//! worth a thread (the machines this runs on have a few cores; a feed of a
//! million prefixes takes every step from seconds to under one).

/// Work below this many items runs on the calling thread: spawning costs
/// tens of microseconds, more than a small feed's whole step.
pub const THREAD_WORTHY: usize = 20_000;

/// Runs `a` here and `b` on a second thread ([`beside`]) when `items`
/// (their work, together) is at least [`THREAD_WORTHY`]; else both here. A
/// panic in `b` is carried over.
pub fn join<A, B>(items: usize, a: impl FnOnce() -> A, b: impl FnOnce() -> B + Send) -> (A, B)
where
    B: Send,
{
    if items < THREAD_WORTHY {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let b = beside(scope, b);
        let a = a();
        (
            a,
            b.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    })
}

/// `work` on each half of `list` ([`join`], `items` the work of both):
/// the first half's result, then the second's.
pub fn halves<'a, T: Sync, R: Send>(
    items: usize,
    list: &'a [T],
    work: impl Fn(&'a [T]) -> R + Sync,
) -> (R, R) {
    let (first, second) = list.split_at(list.len() / 2);
    join(items, || work(first), || work(second))
}

/// Starts `work` on a new thread of `scope`, which keeps off the calling
/// thread's CPU ([`elsewhere`]), for the caller to go on beside it.
///
/// A new thread is often queued on its parent's CPU, where it waits until
/// the parent is preempted: in the daemon (not in the benchmark's own
/// process, for no reason found) most helpers started 1.3-2.7 ms after
/// their spawn, 4-15 ms of waiting in each 1% update of a million
/// prefixes. So the caller steps aside once: a thread queued beside it
/// runs, moves itself off (a few microseconds), and the caller goes on; one
/// queued elsewhere keeps nobody waiting. Helpers then started 80-160 us
/// after their spawn.
pub fn beside<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    work: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    // SAFETY: sched_getcpu has no preconditions.
    let here = unsafe { libc::sched_getcpu() };
    let thread = scope.spawn(move || {
        elsewhere(here);
        work()
    });
    std::thread::yield_now();
    thread
}

/// Takes the calling thread off CPU `cpu`, when it may run on another.
///
/// A new thread may start on its parent's CPU and share it until the
/// scheduler moves one of them, a few ms later: on this machine kind (a
/// virtual machine whose kernel packs work onto few vCPUs) that was the rule
/// after a few idle seconds, as a feed update usually comes. The daemon's
/// signature check then took 40-46 ms of wall time for 33-36 of CPU, and its
/// parse 26 ms where it otherwise takes 20. A thread [`beside`] lives for
/// one step, so the restriction ends with it.
fn elsewhere(cpu: i32) {
    let Ok(cpu) = usize::try_from(cpu) else {
        return;
    };
    let size = size_of::<libc::cpu_set_t>();
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls read and
    // write only that set, of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut set) != 0
            || !libc::CPU_ISSET(cpu, &set)
            || libc::CPU_COUNT(&set) < 2
        {
            return;
        }
        libc::CPU_CLR(cpu, &mut set);
        // Should it fail, the thread runs where the scheduler puts it.
        libc::sched_setaffinity(0, size, &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    fn allowed() -> Vec<usize> {
        // SAFETY: as in `elsewhere`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    }

    fn allow_only(cpu: usize) {
        // SAFETY: as in `elsewhere`.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    #[test]
    fn a_thread_sent_elsewhere_may_run_anywhere_but_there() {
        // On threads of its own: affinity is a thread's.
        std::thread::spawn(|| {
            let before = allowed();
            let cpu = before[0];
            elsewhere(i32::try_from(cpu).expect("a CPU number"));
            let after = allowed();
            if before.len() > 1 {
                let expected: Vec<usize> = before.into_iter().filter(|&c| c != cpu).collect();
                assert_eq!(after, expected);
            } else {
                assert_eq!(after, before, "the only CPU allowed stays allowed");
            }
        })
        .join()
        .expect("the first thread");
        std::thread::spawn(|| {
            let cpu = allowed()[0];
            allow_only(cpu);
            elsewhere(i32::try_from(cpu).expect("a CPU number"));
            assert_eq!(allowed(), [cpu], "the only CPU allowed stays allowed");
            elsewhere(-1);
            assert_eq!(allowed(), [cpu], "no CPU known: nothing changes");
        })
        .join()
        .expect("the second thread");
    }

    #[test]
    fn a_thread_beside_keeps_off_one_cpu_and_hands_back_its_result() {
        let before = allowed();
        let (helper, result) = std::thread::scope(|scope| {
            beside(scope, || (allowed(), 6 * 7))
                .join()
                .expect("the thread beside")
        });
        assert_eq!(result, 42);
        assert!(helper.iter().all(|cpu| before.contains(cpu)));
        let expected = if before.len() > 1 {
            before.len() - 1
        } else {
            before.len()
        };
        assert_eq!(helper.len(), expected, "{before:?} -> {helper:?}");
        assert_eq!(allowed(), before, "the caller's own CPUs stay");
    }

    #[test]
    fn join_runs_both_and_keeps_their_results() {
        let (a, b) = join(THREAD_WORTHY, || 2 + 2, || "four".len());
        assert_eq!((a, b), (4, 4));
        let (a, b) = join(1, || 1, || 2);
        assert_eq!((a, b), (1, 2));
    }

    #[test]
    fn halves_hand_over_each_half_in_order() {
        let list: Vec<u32> = (0..5).collect();
        for items in [1, THREAD_WORTHY] {
            assert_eq!(
                halves(items, &list, <[u32]>::to_vec),
                (vec![0, 1], vec![2, 3, 4])
            );
        }
    }
}
