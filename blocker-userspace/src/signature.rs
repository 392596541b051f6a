//! minisign (Ed25519) verification of the feed, as the stock
//! `minisign -S -m FEED` signs it (prehashed signatures; legacy ones too).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("public key {path}: cannot read it: {source}")]
    KeyUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "public key {origin}: not a minisign public key (expected the file `minisign -G` writes: a comment line, then base64)"
    )]
    KeyMalformed { origin: String },
    #[error("signature is malformed or truncated: expected the four lines `minisign -S` writes")]
    SignatureMalformed,
    #[error(
        "signed by another key (key id differs from the configured public key): check feed.public_key or ask the regulator"
    )]
    KeyMismatch,
    #[error(
        "signature does not verify: the feed was altered after signing, or the signature belongs to another file"
    )]
    Invalid,
}

/// The regulator's public key.
pub struct PublicKey(minisign_verify::PublicKey);

impl PublicKey {
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SignatureError::KeyUnreadable {
                path: path.to_owned(),
                source,
            })?;
        minisign_verify::PublicKey::decode(&text)
            .or_else(|_| minisign_verify::PublicKey::from_base64(text.trim()))
            .map(Self)
            .map_err(|_| SignatureError::KeyMalformed {
                origin: path.display().to_string(),
            })
    }

    pub fn from_base64(text: &str) -> Result<Self, SignatureError> {
        minisign_verify::PublicKey::from_base64(text.trim())
            .map(Self)
            .map_err(|_| SignatureError::KeyMalformed {
                origin: "(base64)".to_owned(),
            })
    }
}

/// A signature file's content, decoded.
pub struct Decoded {
    signature: minisign_verify::Signature,
    /// For a prehashed signature (what `minisign -S` makes: Ed25519 over
    /// the feed's BLAKE2b-512), the same signature marked legacy (Ed25519
    /// over the message given), to be given that hash: the feed is hashed
    /// here ([`Digest`]) rather than by minisign-verify, whose BLAKE2b
    /// takes 40 ms over a 30 MB feed where `blake2b_simd` takes 26. The key id,
    /// the signature and the trusted comment with its global signature are
    /// checked by minisign-verify as ever.
    over_hash: Option<minisign_verify::Signature>,
}

impl Decoded {
    pub fn new(signature: &[u8]) -> Result<Self, SignatureError> {
        let text =
            std::str::from_utf8(signature).map_err(|_| SignatureError::SignatureMalformed)?;
        let signature = minisign_verify::Signature::decode(text)
            .map_err(|_| SignatureError::SignatureMalformed)?;
        Ok(Self {
            signature,
            over_hash: over_hash(text),
        })
    }
}

/// The algorithm bytes minisign writes first in a signature's second line:
/// Ed25519 over the BLAKE2b-512 of the file, or over the file itself.
const PREHASHED: &[u8; 2] = b"ED";
const LEGACY: &[u8; 2] = b"Ed";

/// `text` (a signature minisign-verify decoded) with its algorithm changed
/// from prehashed to legacy, when it is prehashed; `None` otherwise (or
/// should it not re-encode: the feed is then hashed by minisign-verify).
fn over_hash(text: &str) -> Option<minisign_verify::Signature> {
    use base64::Engine as _;
    let mut lines: Vec<&str> = text.lines().collect();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(lines.get(1)?.trim())
        .ok()?;
    if bytes.get(..2)? != PREHASHED {
        return None;
    }
    bytes[..2].copy_from_slice(LEGACY);
    let line = base64::engine::general_purpose::STANDARD.encode(&bytes);
    lines[1] = &line;
    minisign_verify::Signature::decode(&lines.join("\n")).ok()
}

/// A feed's BLAKE2b-512: what a prehashed minisign signature signs, and
/// the feed's fingerprint (the daemon tells a fetched feed is the one in
/// force by it, with no second hash of its bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(blake2b_simd::Hash);

impl Digest {
    pub fn of(feed: &[u8]) -> Self {
        let mut digesting = Digesting::default();
        digesting.update(feed);
        digesting.finish()
    }
}

/// A feed's [`Digest`] taken a piece at a time, as it arrives: the check's
/// cost is paid while a download or a read lasts instead of after it.
pub struct Digesting(blake2b_simd::State);

impl Default for Digesting {
    fn default() -> Self {
        Self(blake2b_simd::Params::new().hash_length(64).to_state())
    }
}

impl Digesting {
    /// The feed's next piece.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The digest of all the pieces, in order.
    pub fn finish(&self) -> Digest {
        Digest(self.0.finalize())
    }
}

/// A prehashed signature (what `minisign -S` makes) by the configured key,
/// to check over a feed's [`Digest`] once it is taken.
pub struct OverDigest<'a> {
    key: &'a PublicKey,
    over_hash: &'a minisign_verify::Signature,
}

impl PublicKey {
    /// `signature` as a check over a digest taken piece by piece; `None`
    /// when it cannot be one (a legacy signature, which signs the feed
    /// itself, or another key's): [`verify`] then checks the whole feed
    /// and names the problem.
    pub fn over_digest<'a>(&'a self, signature: &'a Decoded) -> Option<OverDigest<'a>> {
        // minisign-verify's own stream check says whether it can be one.
        self.0.verify_stream(&signature.signature).ok()?;
        Some(OverDigest {
            key: self,
            over_hash: signature.over_hash.as_ref()?,
        })
    }

    /// Checks a prehashed signature, given as [`Decoded::over_hash`] has
    /// it, over the feed's `digest`.
    fn verify_hash(
        &self,
        digest: &Digest,
        over_hash: &minisign_verify::Signature,
    ) -> Result<(), minisign_verify::Error> {
        self.0.verify(digest.0.as_bytes(), over_hash, true)
    }
}

impl OverDigest<'_> {
    /// Whether the signature verifies over the feed whose digest this is.
    pub fn verifies(&self, digest: &Digest) -> bool {
        self.key.verify_hash(digest, self.over_hash).is_ok()
    }
}

/// Verifies `signature` (the content of `FEED.minisig`) over `feed`; the
/// feed's [`Digest`] when it does (for a legacy signature, taken after).
pub fn verify(
    public_key: &PublicKey,
    feed: &[u8],
    signature: &[u8],
) -> Result<Digest, SignatureError> {
    let decoded = Decoded::new(signature)?;
    match &decoded.over_hash {
        Some(over_hash) => {
            let digest = Digest::of(feed);
            public_key.verify_hash(&digest, over_hash).map(|()| digest)
        }
        None => public_key
            .0
            .verify(feed, &decoded.signature, true)
            .map(|()| Digest::of(feed)),
    }
    .map_err(|err| match err {
        minisign_verify::Error::UnexpectedKeyId => SignatureError::KeyMismatch,
        minisign_verify::Error::InvalidEncoding => SignatureError::SignatureMalformed,
        _ => SignatureError::Invalid,
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    struct Keys {
        dir: PathBuf,
    }

    impl Keys {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("blocker-sig-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            let status = Command::new("minisign")
                .args(["-G", "-W", "-f", "-p"])
                .arg(dir.join("k.pub"))
                .arg("-s")
                .arg(dir.join("k.key"))
                .output()
                .expect("the stock `minisign` tool must be installed (cargo xtask setup)");
            assert!(status.status.success(), "minisign -G: {status:?}");
            Self { dir }
        }

        fn sign(&self, file: &Path) -> Vec<u8> {
            self.sign_with(file, &[])
        }

        /// Signs `file` with `minisign -S` and `flags`.
        fn sign_with(&self, file: &Path, flags: &[&str]) -> Vec<u8> {
            let out = Command::new("minisign")
                .arg("-S")
                .args(flags)
                .arg("-s")
                .arg(self.dir.join("k.key"))
                .arg("-m")
                .arg(file)
                .output()
                .expect("minisign -S");
            assert!(out.status.success(), "minisign -S: {out:?}");
            let mut sig = file.as_os_str().to_owned();
            sig.push(".minisig");
            std::fs::read(PathBuf::from(sig)).expect("signature file")
        }

        fn public(&self) -> PublicKey {
            PublicKey::from_file(&self.dir.join("k.pub")).expect("public key")
        }
    }

    impl Drop for Keys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn stock_minisign_signatures_verify_and_tampering_does_not() {
        let keys = Keys::new("a");
        let other = Keys::new("b");
        let feed = keys.dir.join("feed.yaml");
        std::fs::write(&feed, b"format: blocker-feed/v1\nserial: 1\n").expect("write");
        let sig = keys.sign(&feed);
        let content = std::fs::read(&feed).expect("read");
        verify(&keys.public(), &content, &sig).expect("good signature");

        let mut altered = content.clone();
        altered.extend_from_slice(b"# x\n");
        assert!(matches!(
            verify(&keys.public(), &altered, &sig),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verify(&other.public(), &content, &sig),
            Err(SignatureError::KeyMismatch)
        ));
        let truncated = &sig[..sig.len() / 2];
        assert!(verify(&keys.public(), &content, truncated).is_err());
        assert!(matches!(
            verify(&keys.public(), &content, b"garbage"),
            Err(SignatureError::SignatureMalformed)
        ));
        assert!(PublicKey::from_file(&keys.dir.join("missing.pub")).is_err());
        assert!(PublicKey::from_base64("not a key").is_err());
    }

    /// A prehashed signature is checked over the hash taken here, a legacy
    /// one over the feed: both verify, and neither verifies once its
    /// trusted comment (which the global signature covers), its algorithm
    /// or the feed is altered.
    #[test]
    fn prehashed_and_legacy_signatures_are_checked_whole_or_over_the_hash() {
        let keys = Keys::new("e");
        let feed = keys.dir.join("feed.yaml");
        let content = b"format: blocker-feed/v1\nserial: 7\n".to_vec();
        std::fs::write(&feed, &content).expect("write");
        let prehashed = keys.sign(&feed);
        let legacy = keys.sign_with(&feed, &["-l"]);
        let decoded = |sig: &[u8]| Decoded::new(sig).expect("decodes");
        assert!(decoded(&prehashed).over_hash.is_some());
        assert!(decoded(&legacy).over_hash.is_none());
        for sig in [&prehashed, &legacy] {
            verify(&keys.public(), &content, sig).expect("a good signature");
            let text = String::from_utf8(sig.clone()).expect("text");
            let comment = text.replace("trusted comment: ", "trusted comment: x");
            assert!(matches!(
                verify(&keys.public(), &content, comment.as_bytes()),
                Err(SignatureError::Invalid)
            ));
            let mut altered = content.clone();
            altered[0] ^= 1;
            assert!(matches!(
                verify(&keys.public(), &altered, sig),
                Err(SignatureError::Invalid)
            ));
        }
        // Either signature with the other's algorithm: a prehashed one read
        // as legacy checks the feed itself, a legacy one read as prehashed
        // checks its hash; neither verifies.
        let swapped = |sig: &[u8]| {
            use base64::Engine as _;
            let text = String::from_utf8(sig.to_vec()).expect("text");
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let engine = base64::engine::general_purpose::STANDARD;
            let mut bytes = engine.decode(&lines[1]).expect("base64");
            bytes[1] = if bytes[1] == b'D' { b'd' } else { b'D' };
            lines[1] = engine.encode(&bytes);
            lines.join("\n").into_bytes()
        };
        for sig in [&prehashed, &legacy] {
            assert!(matches!(
                verify(&keys.public(), &content, &swapped(sig)),
                Err(SignatureError::Invalid)
            ));
        }
    }

    /// The check over a digest taken in pieces agrees with `verify` on the
    /// whole feed, and the digest with the whole feed's.
    #[test]
    fn a_signature_checked_piece_by_piece_verifies_as_the_whole_does() {
        let keys = Keys::new("c");
        let other = Keys::new("d");
        let feed = keys.dir.join("feed.yaml");
        let content: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("      - 192.0.2.{}/32\n", i % 256).into_bytes())
            .collect();
        std::fs::write(&feed, &content).expect("write");
        let sig = keys.sign(&feed);
        let decoded = Decoded::new(&sig).expect("decodes");
        let streamed = |key: &PublicKey, bytes: &[u8], piece: usize| {
            let check = key.over_digest(&decoded)?;
            let mut digesting = Digesting::default();
            bytes.chunks(piece).for_each(|p| digesting.update(p));
            let digest = digesting.finish();
            assert_eq!(digest, Digest::of(bytes), "pieces of {piece}");
            Some(check.verifies(&digest))
        };
        let whole = verify(&keys.public(), &content, &sig).expect("verifies");
        assert_eq!(whole, Digest::of(&content));
        for piece in [1, 1000, 65_536, content.len()] {
            assert_eq!(streamed(&keys.public(), &content, piece), Some(true));
        }
        let mut altered = content.clone();
        altered[100_000] ^= 1;
        assert_eq!(streamed(&keys.public(), &altered, 4096), Some(false));
        assert_eq!(
            streamed(&keys.public(), &content[..content.len() - 1], 4096),
            Some(false)
        );
        // Another key's signature is no check over a digest: `verify` names it.
        assert_eq!(streamed(&other.public(), &content, 4096), None);
        // Nor is a legacy signature (it signs the feed itself, not its
        // hash): `verify` checks the whole feed.
        let legacy = keys.sign_with(&feed, &["-l"]);
        let decoded = Decoded::new(&legacy).expect("decodes");
        assert!(keys.public().over_digest(&decoded).is_none());
        let digest = verify(&keys.public(), &content, &legacy).expect("a good legacy signature");
        assert_eq!(digest, whole, "the feed's digest, whatever signs it");
        assert_ne!(Digest::of(&altered), whole);
    }
}
