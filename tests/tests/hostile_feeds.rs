//! The hostile feed corpus (`tests/hostile/`, listed in `cases.tsv`) plus
//! cases made at run time (signatures, serials, sizes): every one is named
//! by `blocker validate` (exit 1) and refused by a running daemon, which
//! keeps the last good feed in force (a stream to its order leaks nothing),
//! counts and audits each refusal by reason, and does not grow.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use blocker::feed::{Direction, Order, Rung};
use blocker_tests::{
    minisign::KeyPair,
    orders::{drop_order, feed_yaml},
    require_root,
    topology::{Edge, Stream, server_v4},
    workspace_root,
};
use time::OffsetDateTime;

const PORT: u16 = 6300;
const GOOD_SERIAL: u64 = 500;

/// How a case's signature is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    /// By the regulator's key: only the content is at fault.
    Good,
    /// One character of the signature changed.
    Flipped,
    /// No `.minisig` at all.
    Missing,
    /// The first half of the `.minisig`.
    Truncated,
    /// By a key the operator never configured.
    ForeignKey,
    /// A good signature of another feed.
    OtherFile,
    /// The signature of the feed in force, as it is on disk.
    InForce,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    signed: Signed,
    /// The `reason` label the daemon counts the refusal under.
    reason: &'static str,
    /// What `blocker validate` prints and the audit record's detail holds.
    expect: String,
}

fn committed_cases() -> Vec<Case> {
    let dir = workspace_root().join("tests/hostile");
    let manifest = fs::read_to_string(dir.join("cases.tsv")).expect("tests/hostile/cases.tsv");
    let mut cases = Vec::new();
    for line in manifest.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [file, reason, expect] = fields[..] else {
            panic!("cases.tsv: bad line {line:?}");
        };
        let reason = match reason {
            "parse" => "parse",
            "guardrails" => "guardrails",
            other => panic!("cases.tsv: unknown reason {other}"),
        };
        cases.push(Case {
            name: file.to_owned(),
            bytes: fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}")),
            signed: Signed::Good,
            reason,
            expect: expect.to_owned(),
        });
    }
    let listed = cases.len();
    let on_disk = fs::read_dir(&dir)
        .expect("tests/hostile")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert_eq!(
        listed, on_disk,
        "every file in tests/hostile is in cases.tsv"
    );
    cases
}

fn good_order(target: &str) -> Order {
    drop_order("GOOD", Direction::Dst, &[target])
}

/// Cases that need the run's keys, serials or sizes.
fn generated_cases(target: &str) -> Vec<Case> {
    let now = OffsetDateTime::now_utc();
    let valid = |serial: u64| feed_yaml(serial, now, &[good_order(target)]).into_bytes();
    let case = |name: &str, bytes: Vec<u8>, signed, reason, expect: &str| Case {
        name: name.to_owned(),
        bytes,
        signed,
        reason,
        expect: expect.to_owned(),
    };
    let mut broad = drop_order(
        "MANY",
        Direction::Dst,
        &(0..1100u32)
            .map(|i| format!("2001:db8:200::{i:x}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    broad.rung = Rung::Datacenter;
    // Over the 64 MiB cap on a feed (and feed.max_bytes' default).
    let mut enormous = valid(1001);
    enormous.extend(std::iter::repeat_n(b'#', 70 * 1024 * 1024));
    vec![
        case(
            "signature-flipped",
            valid(1001),
            Signed::Flipped,
            "signature",
            "signature",
        ),
        case(
            "signature-missing",
            valid(1001),
            Signed::Missing,
            "fetch",
            "minisig",
        ),
        case(
            "signature-truncated",
            valid(1001),
            Signed::Truncated,
            "signature",
            "signature",
        ),
        case(
            "signature-foreign-key",
            valid(1001),
            Signed::ForeignKey,
            "signature",
            "signature",
        ),
        case(
            "signature-of-another-feed",
            valid(1001),
            Signed::OtherFile,
            "signature",
            "signature",
        ),
        // Signature first: these are refused for their signature, not for
        // what a parse would find in them.
        case(
            "nested-and-signature-flipped",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            Signed::Flipped,
            "signature",
            "signature",
        ),
        case(
            "serial-older-and-signature-of-another-feed",
            valid(GOOD_SERIAL - 100),
            Signed::OtherFile,
            "signature",
            "signature",
        ),
        case(
            "serial-older",
            valid(GOOD_SERIAL - 100),
            Signed::Good,
            "serial",
            "serial 400 is not larger than serial 500",
        ),
        case(
            "serial-equal",
            feed_yaml(
                GOOD_SERIAL,
                now,
                &[
                    good_order(target),
                    drop_order("NEW", Direction::Dst, &["198.51.100.99"]),
                ],
            )
            .into_bytes(),
            Signed::Good,
            "serial",
            "serial 500 is not larger than serial 500",
        ),
        case(
            "too-many-prefixes",
            feed_yaml(1001, now, &[good_order(target), broad]).into_bytes(),
            Signed::Good,
            "guardrails",
            "over guardrails.max_prefixes (1024)",
        ),
        case(
            "nested-100k-deep",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            Signed::Good,
            "parse",
            "nested deeper than 16 levels",
        ),
        case(
            "enormous-70MiB",
            enormous,
            Signed::Good,
            "too_large",
            "bytes",
        ),
    ]
}

/// Writes `case` to `path` with its `.minisig` as the case says
/// (`in_force`: the signature of the feed in force).
fn place(case: &Case, path: &Path, keys: [&KeyPair; 2], in_force: &str, scratch: &Path) {
    let [key, foreign] = keys;
    let signature_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".minisig");
        PathBuf::from(p)
    };
    let staged = scratch.join("staged.yaml");
    fs::write(&staged, &case.bytes).expect("staging the case");
    let signature = match case.signed {
        Signed::Good | Signed::Flipped | Signed::Truncated | Signed::Missing => {
            fs::read_to_string(key.sign(&staged)).expect("signature")
        }
        Signed::ForeignKey => fs::read_to_string(foreign.sign(&staged)).expect("signature"),
        Signed::OtherFile => {
            let other = scratch.join("other.yaml");
            fs::write(&other, b"format: blocker-feed/v1\nserial: 9\n").expect("other");
            fs::read_to_string(key.sign(&other)).expect("signature")
        }
        Signed::InForce => in_force.to_owned(),
    };
    let signature = match case.signed {
        Signed::Flipped => {
            let mut lines: Vec<String> = signature.lines().map(str::to_owned).collect();
            let line = &mut lines[1];
            let mid = line.len() / 2;
            let flipped = if &line[mid..=mid] == "A" { "B" } else { "A" };
            line.replace_range(mid..=mid, flipped);
            lines.join("\n") + "\n"
        }
        Signed::Truncated => signature[..signature.len() / 2].to_owned(),
        _ => signature,
    };
    if case.signed == Signed::Missing {
        let _ = fs::remove_file(&signature_path);
    } else {
        fs::write(&signature_path, signature).expect("placing the signature");
    }
    fs::rename(&staged, path).expect("placing the feed");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn every_hostile_feed_is_named_by_validate_and_refused_by_the_daemon() {
    require_root();
    let target = server_v4(80);
    let edge = Edge::new(&[target]);
    let foreign = KeyPair::generate();
    let scratch = edge.dir.path().join("scratch");
    fs::create_dir(&scratch).expect("scratch dir");
    edge.publish(GOOD_SERIAL, &[good_order(&target.to_string())]);
    let daemon = edge.start_daemon(GOOD_SERIAL);

    let mut cases = committed_cases();
    let committed = cases.len();
    cases.extend(generated_cases(&target.to_string()));
    // The feed in force with one digit changed, under its own signature: its
    // length and signature are those of the feed in force, and only its
    // digest tells it is not that feed (which the daemon would leave alone,
    // reporting nothing).
    let in_force_signature = fs::read_to_string(format!("{}.minisig", edge.feed_path().display()))
        .expect("its signature");
    let mut altered = fs::read(edge.feed_path()).expect("the feed in force");
    let at = (altered.len() / 2..altered.len())
        .find(|&i| altered[i].is_ascii_digit())
        .expect("a digit after the middle");
    altered[at] = if altered[at] == b'1' { b'2' } else { b'1' };
    cases.push(Case {
        name: "in-force-altered".to_owned(),
        bytes: altered,
        signed: Signed::InForce,
        reason: "signature",
        expect: "does not verify".to_owned(),
    });
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let config = edge.config_path().display().to_string();
    let public_key = edge.key.public_key().display().to_string();
    let stream = Stream::start(&edge, target, PORT);
    let rss_before = vm_rss_kib(daemon.pid());
    let started = Instant::now();
    let mut slowest_validate = Duration::ZERO;
    for case in &cases {
        // `blocker validate`, as an operator would run it.
        let file = scratch.join("case.yaml");
        place(
            case,
            &file,
            [&edge.key, &foreign],
            &in_force_signature,
            &scratch,
        );
        let begun = Instant::now();
        let out = edge.blocker(&[
            "validate",
            &file.display().to_string(),
            "--public-key",
            &public_key,
            "--config",
            &config,
        ]);
        let took = begun.elapsed();
        slowest_validate = slowest_validate.max(took);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: validate must exit 1 (stdout {stdout}, stderr {})",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&case.expect),
            "{}: validate does not say {:?}:\n{stdout}",
            case.name,
            case.expect
        );
        assert!(
            took < Duration::from_secs(10),
            "{}: took {took:?}",
            case.name
        );

        // The running daemon.
        let label = [("reason", case.reason)];
        let before = daemon
            .scrape()
            .get("blocker_feed_sync_failures_total", &label)
            .unwrap_or(0.0);
        place(
            case,
            &edge.feed_path(),
            [&edge.key, &foreign],
            &in_force_signature,
            &scratch,
        );
        daemon.hangup();
        let scrape = daemon.scrape_until(
            &format!("{} refused as {}", case.name, case.reason),
            Duration::from_secs(15),
            |s| {
                s.get("blocker_feed_sync_failures_total", &label)
                    .unwrap_or(0.0)
                    > before
            },
        );
        assert_eq!(
            scrape.get("blocker_feed_serial", &[]),
            Some(GOOD_SERIAL as f64),
            "{}: the last good feed stays",
            case.name
        );
    }
    let corpus_time = started.elapsed();
    let (sent, leaked) = stream.finish();
    let rss_after = vm_rss_kib(daemon.pid());
    eprintln!(
        "hostile feeds: {} cases ({committed} committed), {corpus_time:?}, slowest validate {slowest_validate:?}, daemon RSS {rss_before} KiB -> {rss_after} KiB, {sent} datagrams sent to the good order, {leaked} delivered",
        cases.len()
    );
    assert!(sent > 100, "the stream ran ({sent} sent)");
    assert_eq!(leaked, 0, "the good order leaked {leaked} of {sent}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Every refusal is in the audit log, with what was wrong.
    let audit = fs::read_to_string(edge.dir.path().join("state/audit.jsonl")).expect("audit");
    let refusals: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line"))
        .filter(|e: &serde_json::Value| e["event"] == "feed_refused")
        .collect();
    assert!(
        refusals.len() >= cases.len(),
        "{} refusals audited for {} cases",
        refusals.len(),
        cases.len()
    );
    for case in &cases {
        assert!(
            refusals.iter().any(|r| r["reason"] == case.reason
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&case.expect))),
            "{}: no feed_refused record with reason {} saying {:?}",
            case.name,
            case.reason,
            case.expect
        );
    }

    // And a good feed after all that is applied.
    edge.publish(GOOD_SERIAL + 1, &[good_order(&target.to_string())]);
    daemon.hangup();
    daemon.scrape_until("the next good feed", Duration::from_secs(15), |s| {
        s.get("blocker_feed_serial", &[]) == Some((GOOD_SERIAL + 1) as f64)
    });
    drop(daemon);
}
