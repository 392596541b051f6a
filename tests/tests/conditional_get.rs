//! Conditional GET against a real HTTP server (Python's, whose
//! `Last-Modified` is the file's time in whole seconds): a feed rewritten
//! within the second it was downloaded in is still seen as changed, and a
//! feed downloaded later than the second it was written in is answered 304
//! while it stays the same.

use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use blocker::{
    feed,
    sync::{FeedSource, Fetch},
};
use blocker_tests::{feed_server::FeedServer, minisign::KeyPair, orders::feed_yaml};
use time::OffsetDateTime;

/// Writes feed `serial` (signed) as `feed.yaml` in `dir`, its time set to
/// `modified`.
fn publish(dir: &Path, key: &KeyPair, serial: u64, modified: SystemTime) {
    let path = dir.join("feed.yaml");
    fs::write(&path, feed_yaml(serial, OffsetDateTime::now_utc(), &[])).expect("writing the feed");
    key.sign(&path);
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(modified))
        .expect("setting the feed's time");
}

/// Fetches and commits; the serial of the feed downloaded, or `None` when
/// the server said it is unchanged.
fn poll(source: &mut FeedSource) -> Option<u64> {
    match source.fetch(false).expect("the fetch") {
        Fetch::Unchanged => None,
        Fetch::New(fetched) => {
            source.commit(&fetched);
            Some(feed::parse(&fetched.feed).expect("the feed parses").serial)
        }
    }
}

/// The start of the current second, once at least `room` of it is left.
fn second_with_room(room: Duration) -> SystemTime {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        if since.subsec_nanos() < 1_000_000_000 - room.as_nanos() as u32 {
            return UNIX_EPOCH + Duration::from_secs(since.as_secs());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_feed_rewritten_within_the_second_of_its_download_is_downloaded_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let server = FeedServer::start(dir.path());
    // Feed 1 written and downloaded within one second: the response's Date
    // is its Last-Modified. (Tried again, a few times, should the download
    // end in the next second.)
    let mut tries = 0;
    let (mut source, second) = loop {
        let mut source = server.source("feed.yaml");
        let second = second_with_room(Duration::from_millis(700));
        publish(dir.path(), &key, 1, second);
        assert_eq!(poll(&mut source), Some(1));
        if SystemTime::now() < second + Duration::from_secs(1) {
            break (source, second);
        }
        tries += 1;
        assert!(
            tries < 5,
            "no download within the second of its feed's write"
        );
    };
    // Feed 2 within that same second, as a quick republish would be: a
    // Last-Modified of whole seconds does not change.
    publish(dir.path(), &key, 2, second + Duration::from_millis(500));
    assert_eq!(
        poll(&mut source),
        Some(2),
        "a feed rewritten within the second it was downloaded in was taken as unchanged"
    );
}

#[test]
fn a_feed_written_in_an_earlier_second_is_answered_304_while_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let server = FeedServer::start(dir.path());
    let mut source = server.source("feed.yaml");

    let earlier = SystemTime::now() - Duration::from_secs(10);
    publish(dir.path(), &key, 1, earlier);
    assert_eq!(poll(&mut source), Some(1));
    assert_eq!(
        poll(&mut source),
        None,
        "an unchanged feed was downloaded again"
    );
    // A new feed, written later, is downloaded.
    publish(dir.path(), &key, 2, earlier + Duration::from_secs(5));
    assert_eq!(poll(&mut source), Some(2));
    assert_eq!(
        poll(&mut source),
        None,
        "an unchanged feed was downloaded again"
    );
}
