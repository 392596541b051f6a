//! A feed downloaded from a real HTTP server, or read from a file, is worked
//! on as it arrives, in pieces: its digest taken (its fingerprint) and its
//! signature checked over it (stock `minisign` signatures), and its text
//! scanned. What that gives is what the same work on the whole feed gives,
//! and a feed whose signature does not verify is never reported verified.

use std::{fs, path::Path, sync::Arc};

use blocker::{
    feed, signature,
    sync::{Arrived, FeedSource, Fetch, Intake},
};
use blocker_tests::{
    bench::workload, feed_server::FeedServer, minisign::KeyPair, orders::feed_yaml,
};
use time::OffsetDateTime;

/// Fetches a feed from `source` with `intake`: its bytes, its signature's
/// and what was worked out as they arrived.
fn fetch(source: FeedSource, intake: &Intake) -> (Vec<u8>, Vec<u8>, Arrived) {
    let Ok(Fetch::New(mut fetched)) = source.with_intake(intake.clone()).fetch(true) else {
        panic!("fetching the feed");
    };
    let (feed, signature, arrived) = fetched.take();
    (feed, signature, arrived.expect("worked on as it arrived"))
}

/// A source of the feed at `url` (each request bounded to 5 s).
fn source_at(url: &str) -> FeedSource {
    FeedSource::new(&blocker::config::FeedConfig {
        url: url.to_owned(),
        public_key: std::path::PathBuf::new(),
        poll_interval: std::time::Duration::from_secs(30),
        ca_bundle: None,
        max_bytes: 64 << 20,
        timeout: std::time::Duration::from_secs(5),
    })
    .expect("a feed source")
}

/// The feed `name` of `dir`, served by `server` or read from its file.
fn sources(server: &FeedServer, dir: &Path, name: &str) -> [(String, FeedSource); 2] {
    let url = format!("file://{}", dir.join(name).display());
    let file = source_at(&url);
    [(server.url(name), server.source(name)), (url, file)]
}

fn write_signed(dir: &Path, name: &str, text: &str, key: &KeyPair) {
    let path = dir.join(name);
    fs::write(&path, text).expect("writing the feed");
    key.sign(&path);
}

/// `text` signed with `key` as `feed.yaml` of `dir`, then fetched by
/// `source` (of `url`): the feed's bytes, which are the text's alone,
/// checked as they arrived.
fn publish_and_fetch(
    source: &mut FeedSource,
    (dir, key): (&Path, &KeyPair),
    url: &str,
    text: &str,
) -> Vec<u8> {
    write_signed(dir, "feed.yaml", text, key);
    let Ok(Fetch::New(mut fetched)) = source.fetch(true) else {
        panic!("fetching {url}");
    };
    let (feed, _, arrived) = fetched.take();
    assert_eq!(feed, text.as_bytes(), "{url}: the feed's bytes alone");
    assert!(
        arrived.is_some_and(|a| a.verified),
        "{url}: checked as it arrived"
    );
    feed
}

#[test]
fn a_feed_downloaded_or_read_is_checked_as_it_arrives() {
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
    };

    for (url, source) in sources(&server, dir.path(), "good.yaml") {
        let (feed, sig, arrived) = fetch(source, &intake);
        assert_eq!(feed, text.as_bytes(), "{url}");
        assert!(
            arrived.verified,
            "{url}: a good signature verifies as the feed arrives"
        );
        let digest = signature::verify(&public, &feed, &sig).expect("and over the whole feed");
        assert_eq!(arrived.digest, digest, "{url}: the whole feed's digest");
        let parsed = feed::parse_against(&arrived.scanner.finish(&feed), None).expect("parses");
        assert_eq!(
            parsed.feed,
            feed::parse(&feed).expect("parses whole"),
            "{url}"
        );
    }

    // Not verified as it arrived; the whole check names the problem.
    for (name, expected) in [
        ("altered.yaml", "does not verify"),
        ("stranger.yaml", "another key"),
    ] {
        for (url, source) in sources(&server, dir.path(), name) {
            let (feed, sig, arrived) = fetch(source, &intake);
            assert!(!arrived.verified, "{url} is not reported verified");
            assert_eq!(
                arrived.digest,
                signature::Digest::of(&feed),
                "{url}: its fingerprint all the same"
            );
            let err = signature::verify(&public, &feed, &sig).expect_err("refused whole");
            assert!(err.to_string().contains(expected), "{url}: {err}");
        }
    }
}

/// A feed is read or downloaded into the buffer the source was last given
/// back: the same memory, holding the feed's bytes alone (none of what the
/// buffer held before), checked as it arrives as ever; a feed longer than
/// the buffer's room too. A buffer far larger than a feed needs is let go of.
/// Room made for a feed (the daemon's first, which replaced none, gives
/// none back) is a buffer given back as well.
#[test]
fn a_feed_is_read_into_the_buffer_given_back_or_the_room_made() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let long = feed_yaml(1, OffsetDateTime::now_utc(), &workload::orders(60_000, 3));
    let shorter = feed_yaml(2, OffsetDateTime::now_utc(), &workload::orders(50_000, 4));
    let short = feed_yaml(4, OffsetDateTime::now_utc(), &workload::orders(1_000, 6));
    // Past the sixteenth more room a buffer is made with.
    let longer = feed_yaml(3, OffsetDateTime::now_utc(), &workload::orders(70_000, 5));
    assert!(longer.len() > long.len() + long.len() / 16);
    let server = FeedServer::start(dir.path());
    let public = Arc::new(signature::PublicKey::from_file(&key.public_key()).expect("key"));
    let intake = Intake { key: public };
    for (url, source) in sources(&server, dir.path(), "feed.yaml") {
        let mut source = source.with_intake(intake.clone());
        let read = |source: &mut FeedSource, text: &str| {
            publish_and_fetch(source, (dir.path(), &key), &url, text)
        };
        let first = read(&mut source, &long);
        let memory = first.as_ptr();
        source.recycle(first);
        let second = read(&mut source, &shorter);
        assert_eq!(
            second.as_ptr(),
            memory,
            "{url}: read into the buffer given back"
        );
        // Past its room: read whole all the same.
        source.recycle(second);
        let third = read(&mut source, &longer);
        // A buffer of more than twice a feed's room is let go of: a short
        // feed after long ones holds no more than its own room.
        source.recycle(third);
        let fourth = read(&mut source, &short);
        assert!(
            fourth.capacity() < 2 * short.len(),
            "{url}: a short feed in a buffer of {} bytes",
            fourth.capacity()
        );
        // Nothing given back, room made for the long feed: the shorter one
        // is read into it, not into a buffer of its own room.
        source.make_room(long.len());
        let fifth = read(&mut source, &shorter);
        assert_eq!(
            fifth.capacity(),
            long.len() + long.len() / 16,
            "{url}: read into the room made"
        );
        assert_ne!(fifth.capacity(), shorter.len() + shorter.len() / 16);
        // Room far larger than a feed needs is let go of as well.
        source.make_room(long.len());
        let sixth = read(&mut source, &short);
        assert!(
            sixth.capacity() < 2 * short.len(),
            "{url}: a short feed in a buffer of {} bytes",
            sixth.capacity()
        );
    }
}

/// Serves the files of `dir` over HTTP/1.1 one connection at a time, as a
/// simple embedded server does: the next connection is taken only once the
/// client has closed the last. `connections` at most, each bounded in time.
fn one_at_a_time(dir: &Path, connections: usize) -> (u16, std::thread::JoinHandle<usize>) {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        net::TcpListener,
        time::Duration,
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let dir = dir.to_owned();
    let server = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.expect("a connection");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("a read timeout");
            let mut reader = BufReader::new(stream.try_clone().expect("the stream"));
            let mut request = String::new();
            reader.read_line(&mut request).expect("a request line");
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            match fs::read(dir.join(path.trim_start_matches('/'))) {
                Ok(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
                Err(_) => {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
            served += 1;
            // Until the client closes (or the timeout).
            let mut rest = [0u8; 1024];
            while reader.read(&mut rest).is_ok_and(|n| n > 0) {}
        }
        served
    });
    (port, server)
}

/// A server that serves one connection at a time is fetched from as
/// before: the signature, then the feed, each read whole before the next
/// request (a feed held open while its signature was requested would wait
/// for the timeout).
#[test]
fn a_feed_is_fetched_from_a_server_of_one_connection_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let text = feed_yaml(1, OffsetDateTime::now_utc(), &workload::orders(60_000, 5));
    write_signed(dir.path(), "feed.yaml", &text, &key);
    let (port, server) = one_at_a_time(dir.path(), 2);
    let public = Arc::new(signature::PublicKey::from_file(&key.public_key()).expect("key"));
    let mut source = source_at(&format!("http://127.0.0.1:{port}/feed.yaml"))
        .with_intake(Intake { key: public });
    let started = std::time::Instant::now();
    let fetched = source.fetch(true);
    let Ok(Fetch::New(mut fetched)) = fetched else {
        panic!("fetching from a server of one connection at a time: {fetched:?}");
    };
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "no request waited for another to end"
    );
    let (feed, _, arrived) = fetched.take();
    assert_eq!(feed, text.as_bytes());
    assert!(arrived.expect("worked on as it arrived").verified);
    assert_eq!(server.join().expect("the server"), 2, "two requests");
}
