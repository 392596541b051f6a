//! A feed downloaded from a real HTTP server is worked on as it arrives, in
//! pieces: its signature checked (stock `minisign` signatures), its
//! fingerprint hashed and its text scanned. What that gives is what the same
//! work on the whole feed gives, and a feed whose signature does not verify
//! is never reported verified.

use std::{fs, path::Path, sync::Arc};

use blocker::{
    feed, signature,
    sync::{Arrived, FeedHasher, Fetch, Intake},
};
use blocker_tests::{
    bench::workload, feed_server::FeedServer, minisign::KeyPair, orders::feed_yaml,
};
use time::OffsetDateTime;

/// Downloads the feed `name` from `server` with `intake`: its bytes, its
/// signature's and what was worked out as they arrived.
fn download(server: &FeedServer, name: &str, intake: &Intake) -> (Vec<u8>, Vec<u8>, Arrived) {
    let mut source = server.source(name).with_intake(intake.clone());
    let Ok(Fetch::New(mut fetched)) = source.fetch(true) else {
        panic!("downloading {}", server.url(name));
    };
    let (feed, signature, arrived) = fetched.take();
    (feed, signature, arrived.expect("worked on as it arrived"))
}

fn write_signed(dir: &Path, name: &str, text: &str, key: &KeyPair) {
    let path = dir.join(name);
    fs::write(&path, text).expect("writing the feed");
    key.sign(&path);
}

#[test]
fn a_feed_downloaded_over_http_is_checked_as_it_arrives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let other = KeyPair::generate();
    // About 2 MB: several pieces.
    let text = feed_yaml(1, OffsetDateTime::now_utc(), &workload::orders(60_000, 3));
    assert!(text.len() > 1 << 20, "a feed of {} bytes", text.len());
    write_signed(dir.path(), "good.yaml", &text, &key);
    write_signed(dir.path(), "stranger.yaml", &text, &other);
    // One byte changed after signing, the signature left as it was.
    let mut altered = text.clone().into_bytes();
    let middle = altered.len() / 2;
    altered[middle] = if altered[middle] == b'1' { b'2' } else { b'1' };
    fs::write(dir.path().join("altered.yaml"), &altered).expect("writing the feed");
    fs::copy(
        dir.path().join("good.yaml.minisig"),
        dir.path().join("altered.yaml.minisig"),
    )
    .expect("copying the signature");

    let server = FeedServer::start(dir.path());
    let public = Arc::new(signature::PublicKey::from_file(&key.public_key()).expect("key"));
    let intake = Intake {
        key: Arc::clone(&public),
        hasher: FeedHasher::default(),
    };

    let (feed, sig, arrived) = download(&server, "good.yaml", &intake);
    assert_eq!(feed, text.as_bytes());
    assert!(
        arrived.verified,
        "a good signature verifies as the feed arrives"
    );
    signature::verify(&public, &feed, &sig).expect("and over the whole feed");
    assert_eq!(arrived.hash, intake.hasher.hash(&feed));
    let parsed = feed::parse_against(&arrived.scanner.finish(&feed), None).expect("parses");
    assert_eq!(parsed.feed, feed::parse(&feed).expect("parses whole"));

    // Not verified as it arrived; the whole check names the problem.
    for (name, expected) in [
        ("altered.yaml", "does not verify"),
        ("stranger.yaml", "another key"),
    ] {
        let (feed, sig, arrived) = download(&server, name, &intake);
        assert!(!arrived.verified, "{name} is not reported verified");
        let err = signature::verify(&public, &feed, &sig).expect_err("refused whole");
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
}
