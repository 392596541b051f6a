//! The feed parser and validator on arbitrary bytes: it never panics, hangs
//! or eats memory; its fast paths give exactly what the general path gives
//! (the same feed, or the same problems), and so does a parse against the
//! feed before (two feeds split at a NUL); whatever it accepts it writes
//! back and reads again unchanged; and every accepted feed compiles into
//! tables that decide like the contract's reference on addresses at the
//! edges of its targets, also when compiled as a change from the feed
//! before, told how the parse made its orders' targets (its edits).
#![no_main]

use std::net::IpAddr;

use blocker::{
    compile::{self, Enforcement, SlotTable},
    feed, policy,
};
use libfuzzer_sys::fuzz_target;

/// Enough probes to cover small feeds; big ones are the parser's business.
const MAX_PROBES: usize = 64;

fuzz_target!(|data: &[u8]| {
    // Two feeds, split at a NUL (never in a feed): the second parsed
    // against the first gives what it gives parsed whole, shape included.
    if let Some(nul) = data.iter().position(|&b| b == 0) {
        let (before, after) = (&data[..nul], &data[nul + 1..]);
        if let Ok(first) = feed::parse_against(&feed::Text::scan(before), None)
            && let Some(shape) = &first.shape
        {
            let base = feed::Base::new(before, &first.feed.orders, shape)
                .expect("a feed's shape fits it");
            let both = |parsed: Result<feed::Parsed, feed::FeedError>| {
                parsed
                    .map(|p| (p.feed, p.shape))
                    .map_err(|err| err.to_string())
            };
            assert_eq!(
                both(feed::parse_against(&feed::Text::scan(after), Some(&base))),
                both(feed::parse_against(&feed::Text::scan(after), None)),
                "parsed against the feed before, the feed differs"
            );
            if let Ok(mut again) = feed::parse_against(&feed::Text::scan(after), Some(&base)) {
                let edits = std::mem::take(&mut again.edits);
                compiled_as_a_change(&first.feed, &again.feed, &edits);
            }
        }
    }
    let result = feed::parse(data);
    assert_eq!(
        result.as_ref().map_err(ToString::to_string),
        feed::parse_general_only(data).as_ref().map_err(ToString::to_string),
        "the fast paths and the general path disagree"
    );
    let Ok(parsed) = result else {
        return;
    };
    let written = feed::to_yaml(&parsed);
    let again = feed::parse(written.as_bytes()).unwrap_or_else(|err| {
        panic!("an accepted feed, written back, is refused: {err}\n{written}")
    });
    assert_eq!(
        again, parsed,
        "written back and read again, the feed changed"
    );

    let now = parsed.issued_at;
    let Ok(evaluation) = policy::evaluate(&parsed, &policy::Guardrails::default(), now) else {
        return;
    };
    let orders: Vec<_> = evaluation.enforceable().collect();
    let compiled = compile::compile(&orders, Enforcement::Enforce, &SlotTable::new())
        .expect("an evaluated feed compiles");
    decides_like_the_reference(&compiled, &orders, now);
});

/// `after` (parsed against `before`, which told `edits`) compiled as a
/// change from `before`'s compile decides like the reference.
fn compiled_as_a_change(before: &feed::Feed, after: &feed::Feed, edits: &feed::Edits) {
    let now = after.issued_at;
    let guardrails = policy::Guardrails::default();
    let (Ok(first), Ok(second)) = (
        policy::evaluate(before, &guardrails, now),
        policy::evaluate(after, &guardrails, now),
    ) else {
        return;
    };
    let mut compiler = compile::Compiler::new();
    let orders: Vec<_> = first.enforceable().collect();
    let slots = compiler
        .compile(&orders, Enforcement::Enforce, &SlotTable::new())
        .expect("an evaluated feed compiles")
        .compiled
        .slots
        .clone();
    let orders: Vec<_> = second.enforceable().collect();
    let step = compiler
        .compile_edited(&orders, Enforcement::Enforce, &slots, edits)
        .expect("an evaluated feed compiles");
    decides_like_the_reference(step.compiled, &orders, now);
}

/// Packets between addresses at the edges of `orders`' targets get from
/// `compiled` what the contract's reference gives them (unless candidates
/// were cut, which the reference does not do).
fn decides_like_the_reference(
    compiled: &compile::Compiled,
    orders: &[&feed::Order],
    now: time::OffsetDateTime,
) {
    if compiled.overflow > 0 {
        return;
    }
    let probes: Vec<IpAddr> = orders
        .iter()
        .flat_map(|o| o.targets.iter())
        .flat_map(|t| [t.network(), t.broadcast()])
        .take(MAX_PROBES)
        .collect();
    for &a in &probes {
        for &b in probes.iter().filter(|b| b.is_ipv4() == a.is_ipv4()).take(4) {
            if let Err(disagreement) =
                compile::check_packet(compiled, orders, Enforcement::Enforce, a, b, now)
            {
                panic!("{disagreement}");
            }
        }
    }
}
