//! Per-packet cost under BPF_PROG_TEST_RUN: the real blocker program (loaded
//! and fed by `Datapath`, as the daemon does), an empty program, and the
//! LPM-trie reference (same parsing, decision and counting; loaded against
//! blocker's pinned order maps). "Hot" repeats one frame; "varied" puts a
//! driver in front that writes the next address pair of a pool into the
//! frame and tail-calls the program under test.

use std::{
    fs,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, ProgramArray, lpm_trie::LpmTrie},
    programs::{ProgramFd, TestRun as _, TestRunOptions, Xdp},
};
use blocker::{
    compile::{self, Compiled, Enforcement, SlotTable},
    datapath::{BENCH_PROGRAMS, Datapath},
    feed::Order,
};
use blocker_common::PrefixEntry;

use crate::{
    bpffs::BpffsDir,
    frame::FrameSpec,
    netns::{NetNs, VethPair},
};

/// A program the benchmark times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Empty,
    Lpm,
    Blocker,
    /// The second blocker ([`Kernel::load_beside`]), loaded beside the
    /// first with tables of its own.
    BlockerBeside,
}

impl Program {
    pub const fn as_str(self) -> &'static str {
        match self {
            Program::Empty => "empty",
            Program::Lpm => "lpm_reference",
            Program::Blocker => "blocker",
            Program::BlockerBeside => "blocker_beside",
        }
    }
}

/// Everything loaded: blocker through `Datapath`, the bench object beside it.
pub struct Kernel {
    pub dp: Datapath,
    slots: SlotTable,
    bench: Ebpf,
    bpffs: BpffsDir,
    beside: Option<Beside>,
    /// Declared last: dropped after the programs it holds attached.
    _resident: Resident,
}

/// A second blocker with tables of its own, loaded beside the first: the
/// two hold two sizes of workload at once, so that the sizes are timed in
/// turn, in the same spells of the shared machine, instead of minutes
/// apart.
struct Beside {
    dp: Datapath,
    slots: SlotTable,
    _bpffs: BpffsDir,
    _resident: Resident,
}

/// Runs `f` on a thread inside `ns` (network namespace only).
pub fn inside<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let file = fs::File::open(ns.path()).expect("opening the namespace");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a namespace descriptor we hold; it
                // changes only this thread's network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(rc == 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Idle veth interfaces, in namespaces of their own, that every program the
/// benchmark runs stays attached to. An attached program stays in the
/// kernel's XDP dispatcher, so BPF_PROG_TEST_RUN does not add it and take
/// it out again around each call: each of those waits for an RCU grace
/// period (13 to 16 ms a call on this machine kind), and spread over a
/// million repeats that had added 13 to 16 ns to every per-packet figure.
struct Resident {
    _pairs: Vec<VethPair>,
    _namespaces: [NetNs; 2],
}

impl Resident {
    /// Attaches each program of `programs` natively to an interface of
    /// its own.
    fn new(programs: &mut [&mut Xdp]) -> Self {
        let namespaces = [NetNs::new(), NetNs::new()];
        let pairs: Vec<VethPair> = (0..programs.len().div_ceil(2))
            .map(|_| VethPair::new(&namespaces[0], &namespaces[1]))
            .collect();
        for (i, program) in programs.iter_mut().enumerate() {
            let pair = &pairs[i / 2];
            let (ns, interface) = if i % 2 == 0 {
                (&namespaces[0], &pair.a)
            } else {
                (&namespaces[1], &pair.b)
            };
            inside(ns, || attach_until_deleted(program, interface));
        }
        Self {
            _pairs: pairs,
            _namespaces: namespaces,
        }
    }
}

/// Attaches `program` natively to `interface` (of the calling thread's
/// namespace) for as long as the interface lives.
fn attach_until_deleted(program: &mut Xdp, interface: &str) {
    let id = program
        .attach(interface, aya::programs::XdpMode::Driver)
        .unwrap_or_else(|err| panic!("attaching a program natively to {interface}: {err}"));
    let link = program.take_link(id).expect("the link just made");
    // Deleting the interface detaches it; keep the link open till then.
    std::mem::forget(link);
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("the bench object has no program {name}"))
        .try_into()
        .unwrap_or_else(|err| panic!("{name} is not an XDP program: {err}"))
}

impl Kernel {
    /// Loads blocker with tables for `max_prefixes`, and the bench programs.
    pub fn new(max_prefixes: u32) -> Self {
        let bpffs = BpffsDir::new();
        let mut dp = Datapath::open(bpffs.path(), max_prefixes)
            .unwrap_or_else(|err| panic!("loading blocker: {err}"));
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(bpffs.path().join("maps"));
        let mut bench = loader
            .load(BENCH_PROGRAMS)
            .unwrap_or_else(|err| panic!("loading the bench object: {err}"));
        for name in ["bench_empty", "bench_lpm", "bench_drive", "bench_gen"] {
            xdp(&mut bench, name)
                .load()
                .unwrap_or_else(|err| panic!("verifying {name}: {err}"));
        }
        let mut programs: Vec<&mut Xdp> = bench
            .programs_mut()
            .map(|(name, program)| {
                program
                    .try_into()
                    .unwrap_or_else(|err| panic!("{name} is not an XDP program: {err}"))
            })
            .collect();
        programs.push(dp.program().expect("blocker's program"));
        let resident = Resident::new(&mut programs);
        Self {
            dp,
            slots: SlotTable::new(),
            bench,
            bpffs,
            beside: None,
            _resident: resident,
        }
    }

    /// Loads a second blocker beside the first, with tables of the same
    /// capacity and nothing in them yet ([`Kernel::apply_beside`]); it
    /// stays attached to an idle interface of its own, as the others do.
    pub fn load_beside(&mut self, max_prefixes: u32) {
        let bpffs = BpffsDir::new();
        let mut dp = Datapath::open(bpffs.path(), max_prefixes)
            .unwrap_or_else(|err| panic!("loading a second blocker: {err}"));
        let resident = Resident::new(&mut [dp.program().expect("the second blocker's program")]);
        self.beside = Some(Beside {
            dp,
            slots: SlotTable::new(),
            _bpffs: bpffs,
            _resident: resident,
        });
    }

    /// [`Kernel::apply`] for the second blocker.
    pub fn apply_beside(&mut self, orders: &[Order]) {
        let beside = self.beside();
        apply_to(&mut beside.dp, &mut beside.slots, orders);
    }

    fn beside(&mut self) -> &mut Beside {
        self.beside
            .as_mut()
            .expect("a second blocker loaded (Kernel::load_beside)")
    }

    /// Unloads the second blocker, its tables and its interface.
    pub fn unload_beside(&mut self) {
        self.beside = None;
    }

    /// Compiles `orders` (all in force) and applies them to blocker; returns
    /// the compiled tables and how long compile and apply took.
    pub fn apply(&mut self, orders: &[Order]) -> (Compiled, Duration, Duration) {
        apply_to(&mut self.dp, &mut self.slots, orders)
    }

    /// Puts the same entries in the LPM reference (the workloads are
    /// nested, so it only grows).
    pub fn load_reference(&mut self, compiled: &Compiled) {
        fill_trie(&mut self.bench, "REF_V4", &compiled.v4, &compiled.entries);
        fill_trie(&mut self.bench, "REF_V6", &compiled.v6, &compiled.entries);
    }

    pub fn program(&mut self, program: Program) -> &mut Xdp {
        match program {
            Program::Empty => xdp(&mut self.bench, "bench_empty"),
            Program::Lpm => xdp(&mut self.bench, "bench_lpm"),
            Program::Blocker => self.dp.program().expect("blocker's program"),
            Program::BlockerBeside => self
                .beside()
                .dp
                .program()
                .expect("the second blocker's program"),
        }
    }

    /// For each of `runs` (a program and a frame), the median of `rounds`
    /// timings of that program on that frame (all caches hot), and its
    /// verdict. The runs take their rounds in turn, so that a noisy spell
    /// of the shared machine falls on each of them, not on one program's
    /// rounds alone: the ratios between them are what the goals compare.
    pub fn hot_in_turn(
        &mut self,
        runs: &[(Program, &[u8])],
        repeat: u32,
        rounds: usize,
    ) -> Vec<(f64, u32)> {
        medians(self.hot_rounds_in_turn(runs, repeat, rounds))
    }

    /// [`Kernel::hot_in_turn`], every round's timing kept.
    pub fn hot_rounds_in_turn(
        &mut self,
        runs: &[(Program, &[u8])],
        repeat: u32,
        rounds: usize,
    ) -> Vec<(Vec<f64>, u32)> {
        rounds_in_turn(runs.len(), rounds, |i| {
            let (program, frame) = runs[i];
            time_run(self.program(program), program.as_str(), frame, repeat)
        })
    }

    /// Loads an address pool into the driver.
    pub fn load_pool(&mut self, pool: &[[u8; 32]], ipv6: bool) {
        assert!(
            pool.len().is_power_of_two(),
            "pool length must be a power of two"
        );
        let mut map: Array<&mut MapData, [u8; 32]> =
            Array::try_from(self.bench.map_mut("DRV_POOL").expect("DRV_POOL map"))
                .expect("DRV_POOL is an array");
        for (i, pair) in pool.iter().enumerate() {
            map.set(i as u32, pair, 0).expect("filling the pool");
        }
        let mut config: Array<&mut MapData, u32> =
            Array::try_from(self.bench.map_mut("DRV_CONFIG").expect("DRV_CONFIG map"))
                .expect("DRV_CONFIG is an array");
        config.set(0, if ipv6 { 6 } else { 4 }, 0).expect("config");
        config.set(1, pool.len() as u32, 0).expect("config");
    }

    /// The median of `rounds` timings of the driver in front of `program`,
    /// with the addresses of the loaded pool; and the verdicts seen.
    pub fn varied(
        &mut self,
        program: Program,
        frame: &[u8],
        repeat: u32,
        rounds: usize,
    ) -> (f64, u32) {
        let fd = self.program_fd(program);
        self.varied_fd(&fd, program.as_str(), frame, repeat, rounds)
    }

    /// For each of `programs`, `rounds` timings of the driver in front of
    /// it with the addresses of the loaded pool, the programs taking their
    /// rounds in turn (as [`Kernel::hot_in_turn`]), each timed round after
    /// an untimed eighth of one, so that it does not start with the caches
    /// the program before it left; and the verdicts.
    pub fn varied_rounds_in_turn(
        &mut self,
        programs: &[Program],
        frame: &[u8],
        repeat: u32,
        rounds: usize,
    ) -> Vec<(Vec<f64>, u32)> {
        rounds_in_turn(programs.len(), rounds, |i| {
            let program = programs[i];
            let fd = self.program_fd(program);
            self.varied_fd(&fd, program.as_str(), frame, repeat / 8, 1);
            self.varied_fd(&fd, program.as_str(), frame, repeat, 1)
        })
    }

    /// A descriptor of `program` of its own.
    fn program_fd(&mut self, program: Program) -> ProgramFd {
        let target = self.program(program);
        let fd = target.fd().expect("loaded program");
        fd.try_clone().expect("duplicating a program fd")
    }

    /// [`Kernel::varied`] in front of any XDP program.
    pub fn varied_fd(
        &mut self,
        fd: &ProgramFd,
        name: &str,
        frame: &[u8],
        repeat: u32,
        rounds: usize,
    ) -> (f64, u32) {
        {
            let mut targets: ProgramArray<&mut MapData> =
                ProgramArray::try_from(self.bench.map_mut("DRV_TARGET").expect("DRV_TARGET"))
                    .expect("DRV_TARGET is a program array");
            targets
                .set(0, fd, 0)
                .unwrap_or_else(|err| panic!("tail-call target {name}: {err}"));
        }
        median_of(rounds, || {
            time_run(
                xdp(&mut self.bench, "bench_drive"),
                "the driver",
                frame,
                repeat,
            )
        })
    }

    /// Runs the generator `count` times with live frames: each run writes
    /// the next pair of the loaded pool into `template` and transmits it on
    /// the interface `ifindex` (of the calling thread's namespace). Returns
    /// the seconds it took.
    pub fn generate(&mut self, ifindex: u32, template: &[u8], count: u32) -> f64 {
        let generator = xdp(&mut self.bench, "bench_gen");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = Vec::with_capacity(24);
        for field in [0, template.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&field.to_ne_bytes());
        }
        let mut options = TestRunOptions::new();
        options.data_in = Some(template);
        options.ctx_in = Some(&ctx);
        options.repeat = count;
        options.attrs = aya::programs::TestRunAttrs::new().xdp_live_frames(64);
        let started = Instant::now();
        generator
            .test_run(options)
            .unwrap_or_else(|err| panic!("the generator (live frames): {err}"));
        started.elapsed().as_secs_f64()
    }

    /// Attaches the empty program (XDP_PASS) natively to `interface` (of
    /// the calling thread's namespace), for as long as the interface lives.
    pub fn attach_pass(&mut self, interface: &str) {
        attach_until_deleted(xdp(&mut self.bench, "bench_empty"), interface);
    }

    /// Kernel memory (memlock) of blocker's maps, in bytes, from fdinfo.
    pub fn blocker_map_bytes(&self) -> u64 {
        let dir = self.bpffs.path().join("maps");
        let mut total = 0;
        for entry in fs::read_dir(&dir).expect("maps dir").flatten() {
            let map = MapData::from_pin(entry.path()).expect("pinned map");
            total += memlock(&map);
        }
        // The program's own data: its step-1 bitmap and control copy.
        total + self.dp.program_data().into_iter().map(memlock).sum::<u64>()
    }

    /// Kernel memory (memlock) of the LPM reference's two tries.
    pub fn reference_map_bytes(&self) -> u64 {
        ["REF_V4", "REF_V6"]
            .iter()
            .map(|name| match self.bench.map(name) {
                Some(aya::maps::Map::LpmTrie(data)) => memlock(data),
                _ => panic!("the bench object has no LPM trie {name}"),
            })
            .sum()
    }
}

/// A map's `memlock` from `/proc/self/fdinfo`: what the kernel charges for
/// it (arrays: all of it, made up front; LPM tries: what they hold).
fn memlock(map: &MapData) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Inserts `entries` into the bench object's LPM trie `name`.
fn fill_trie<const N: usize>(
    bench: &mut Ebpf,
    name: &str,
    prefixes: &[([u8; N], u8, u32)],
    entries: &[PrefixEntry],
) where
    [u8; N]: aya::Pod,
{
    let map = bench
        .map_mut(name)
        .unwrap_or_else(|| panic!("no map {name}"));
    let mut trie: LpmTrie<&mut MapData, [u8; N], PrefixEntry> =
        LpmTrie::try_from(map).unwrap_or_else(|err| panic!("{name} is not an LPM trie: {err}"));
    for &(net, len, entry) in prefixes {
        trie.insert(
            &aya::maps::lpm_trie::Key::new(u32::from(len), net),
            entries[entry as usize],
            0,
        )
        .unwrap_or_else(|err| panic!("inserting into {name}: {err}"));
    }
}

/// Compiles `orders` (all in force) against `slots` and applies them to
/// `dp`, whose slot table `slots` then becomes; returns the compiled tables
/// and how long compile and apply took.
fn apply_to(
    dp: &mut Datapath,
    slots: &mut SlotTable,
    orders: &[Order],
) -> (Compiled, Duration, Duration) {
    let in_force: Vec<&Order> = orders.iter().collect();
    let started = Instant::now();
    let compiled = compile::compile(&in_force, Enforcement::Enforce, slots)
        .unwrap_or_else(|err| panic!("compiling the workload: {err}"));
    let compiled_in = started.elapsed();
    let fresh = compiled.fresh_slots(slots);
    let started = Instant::now();
    dp.apply(&compiled, &fresh)
        .unwrap_or_else(|err| panic!("applying the workload: {err}"));
    let applied_in = started.elapsed();
    *slots = compiled.slots.clone();
    // What follows is timed in the steady state: not while the daemon's
    // background thread writes the generation the apply left behind and
    // levels the program's bitmap (a big change keeps a core busy for a
    // few hundred milliseconds after it).
    dp.settle();
    (compiled, compiled_in, applied_in)
}

/// Mean wall-clock nanoseconds per run of `xdp` on `frame` over `repeat`
/// runs, and the verdict.
fn time_run(xdp: &mut Xdp, what: &str, frame: &[u8], repeat: u32) -> (f64, u32) {
    let mut out = vec![0u8; frame.len() + 256];
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.data_out = Some(&mut out);
    options.repeat = repeat;
    let started = Instant::now();
    let result = xdp
        .test_run(options)
        .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN of {what}: {err}"));
    let ns = started.elapsed().as_nanos() as f64 / f64::from(repeat);
    (ns, result.return_value)
}

/// `rounds` timings of each of `runs` runs (`time` times the one it is
/// given), the runs taking their rounds in turn; with each run's last
/// verdict.
fn rounds_in_turn(
    runs: usize,
    rounds: usize,
    mut time: impl FnMut(usize) -> (f64, u32),
) -> Vec<(Vec<f64>, u32)> {
    let mut timed = vec![(Vec::with_capacity(rounds), 0); runs];
    for _ in 0..rounds {
        for (i, (times, verdict)) in timed.iter_mut().enumerate() {
            let (ns, seen) = time(i);
            times.push(ns);
            *verdict = seen;
        }
    }
    timed
}

/// Each run's median time, and its verdict.
fn medians(mut timed: Vec<(Vec<f64>, u32)>) -> Vec<(f64, u32)> {
    timed
        .iter_mut()
        .map(|(times, verdict)| (median(times), *verdict))
        .collect()
}

/// The median time of `rounds` timings, and the last verdict.
fn median_of(rounds: usize, mut timing: impl FnMut() -> (f64, u32)) -> (f64, u32) {
    let mut verdict = 0;
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let (ns, v) = timing();
            verdict = v;
            ns
        })
        .collect();
    (median(&mut times), verdict)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A plain UDP frame from `src` to `dst`.
pub fn frame(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    FrameSpec::udp(src, dst).build().bytes
}
