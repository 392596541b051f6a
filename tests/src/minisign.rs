//! Keys and signatures from the stock `minisign` tool (the regulator's side).
//! blocker's own code only ever verifies.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tempfile::TempDir;

use crate::run_ok;

/// A passwordless minisign key pair in a temporary directory.
#[derive(Debug)]
pub struct KeyPair {
    dir: TempDir,
}

impl KeyPair {
    /// `minisign -G -W -p pub -s sec`.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("blkt-key-")
            .tempdir()
            .expect("temp dir for the key pair");
        let pair = Self { dir };
        run_ok(
            Command::new("minisign")
                .arg("-G")
                .arg("-W")
                .arg("-p")
                .arg(pair.public_key())
                .arg("-s")
                .arg(pair.secret_key())
                .stdin(Stdio::null()),
        );
        pair
    }

    /// The public key file, as `feed.public_key` names it.
    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("regulator.pub")
    }

    fn secret_key(&self) -> PathBuf {
        self.dir.path().join("regulator.key")
    }

    /// `minisign -S -s sec -m FILE`: writes `FILE.minisig`.
    pub fn sign(&self, file: &Path) -> PathBuf {
        run_ok(
            Command::new("minisign")
                .arg("-S")
                .arg("-s")
                .arg(self.secret_key())
                .arg("-m")
                .arg(file)
                .stdin(Stdio::null()),
        );
        let mut signature = file.as_os_str().to_owned();
        signature.push(".minisig");
        let signature = PathBuf::from(signature);
        assert!(
            signature.is_file(),
            "minisign wrote no {}",
            signature.display()
        );
        signature
    }
}
