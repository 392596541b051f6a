//! The real XDP program under BPF_PROG_TEST_RUN, with orders compiled and
//! applied through `Datapath` exactly as the daemon does.

use std::collections::BTreeMap;

use blocker::{
    compile::{Compiled, Compiler, Enforcement, SlotTable},
    datapath::{ApplyStats, Datapath},
    feed::Order,
};
use blocker_common::{OrderCounters, STAT_COUNT};

use crate::{bpffs::BpffsDir, require_root};

/// Table capacity for these tests: small maps load fast.
pub const MAX_PREFIXES: u32 = 1024;

/// A loaded datapath with what was last applied to it. `dp` is declared
/// before `bpffs` so the program and maps are closed before the pins go.
pub struct Rig {
    pub dp: Datapath,
    pub slots: SlotTable,
    pub compiler: Compiler,
    pub compiled: Option<Compiled>,
    /// What the last apply did.
    pub applied: Option<ApplyStats>,
    _bpffs: BpffsDir,
}

impl Default for Rig {
    fn default() -> Self {
        Self::new()
    }
}

impl Rig {
    pub fn new() -> Self {
        Self::sized(MAX_PREFIXES)
    }

    /// A rig whose tables hold up to `max_prefixes` per family.
    pub fn sized(max_prefixes: u32) -> Self {
        require_root();
        let bpffs = BpffsDir::new();
        let dp = Datapath::open(bpffs.path(), max_prefixes)
            .unwrap_or_else(|err| panic!("loading the XDP program: {err}"));
        Self {
            dp,
            slots: SlotTable::new(),
            compiler: Compiler::sweeping_eagerly(),
            compiled: None,
            applied: None,
            _bpffs: bpffs,
        }
    }

    /// A rig with `orders` (all in force) applied.
    pub fn with(orders: &[Order], enforcement: Enforcement) -> Self {
        let mut rig = Self::new();
        rig.apply(orders, enforcement);
        rig
    }

    /// Compiles `orders` (all taken as in force) against the slot table of
    /// the previous apply and applies the result, as the daemon does: slots
    /// that changed hands are fresh (their counters are zeroed), and a
    /// small change is patched into the tables.
    pub fn apply(&mut self, orders: &[Order], enforcement: Enforcement) {
        let in_force: Vec<&Order> = orders.iter().collect();
        self.apply_in_force(&in_force, enforcement);
    }

    pub fn apply_in_force(&mut self, in_force: &[&Order], enforcement: Enforcement) {
        let step = self
            .compiler
            .compile(in_force, enforcement, &self.slots)
            .unwrap_or_else(|err| panic!("compiling {in_force:#?}: {err}"));
        let fresh = step.compiled.fresh_slots(&self.slots);
        let stats = self
            .dp
            .apply_step(step.compiled, step.version, step.change.as_ref(), &fresh)
            .unwrap_or_else(|err| panic!("applying: {err}"));
        self.slots = step.compiled.slots.clone();
        self.compiled = Some(step.compiled.clone());
        self.applied = Some(stats);
    }

    pub fn slot(&self, id: &str) -> u32 {
        self.slots
            .get(id)
            .unwrap_or_else(|| panic!("order {id} has no slot"))
    }

    pub fn counters(&self, id: &str) -> OrderCounters {
        self.dp
            .maps()
            .order_counters(self.slot(id))
            .unwrap_or_else(|err| panic!("reading counters of {id}: {err}"))
    }

    /// Counters of every order of the last apply.
    pub fn all_counters(&self) -> BTreeMap<String, OrderCounters> {
        let compiled = self.compiled.as_ref().expect("nothing applied yet");
        compiled
            .orders
            .iter()
            .map(|o| (o.id.clone(), self.counters(&o.id)))
            .collect()
    }

    pub fn stats(&self) -> [u64; STAT_COUNT as usize] {
        self.dp
            .maps()
            .stats()
            .unwrap_or_else(|err| panic!("reading statistics: {err}"))
    }

    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.dp.test_run(frame).unwrap_or_else(|err| {
            panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {err}", frame.len())
        })
    }
}
