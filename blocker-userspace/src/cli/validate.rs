//! `blocker validate FEED [--public-key KEY] [--config FILE]`.

use std::{ffi::OsString, fs, path::Path};

use time::OffsetDateTime;

use super::{EnvError, Exit, load_config};
use crate::{
    feed,
    policy::{self, OrderState},
    signature::{self, PublicKey},
    state::StateDir,
};

pub(super) fn validate(
    feed_path: &Path,
    public_key: Option<&Path>,
    signature_path: Option<&Path>,
    config_path: Option<&Path>,
) -> Result<Exit, EnvError> {
    let bytes = fs::read(feed_path)
        .map_err(|e| EnvError::new(format!("reading {}: {e}", feed_path.display())))?;
    let config = config_path.map(load_config).transpose()?;
    let mut problems = Vec::new();

    if let Some(key_path) = public_key {
        let key = PublicKey::from_file(key_path).map_err(EnvError::new)?;
        let signature_path = signature_path.map_or_else(
            || {
                let mut path = OsString::from(feed_path.as_os_str());
                path.push(".minisig");
                std::path::PathBuf::from(path)
            },
            Path::to_path_buf,
        );
        match fs::read(&signature_path) {
            Ok(sig) => {
                if let Err(err) = signature::verify(&key, &bytes, &sig) {
                    problems.push(format!("signature {}: {err}", signature_path.display()));
                }
            }
            Err(err) => problems.push(format!(
                "signature {}: cannot read it ({err}); sign the feed with `minisign -S -m FEED`",
                signature_path.display()
            )),
        }
    }

    let parsed = match feed::parse(&bytes) {
        Ok(feed) => Some(feed),
        Err(err) => {
            problems.extend(err.to_string().lines().map(str::to_owned));
            None
        }
    };

    let mut summary = String::new();
    if let Some(feed) = &parsed {
        summary = format!(
            "serial {}, {}",
            feed.serial,
            super::counted(feed.orders.len(), "order", "orders")
        );
        if let Some(config) = &config {
            // As the daemon would: a feed must be newer than the one in force.
            if let Some(in_force) = StateDir::existing(&config.state_dir)
                .and_then(|state| state.load_feed().ok().flatten())
                && feed.serial <= in_force.serial
            {
                problems.push(format!(
                    "serial {} is not larger than serial {} in force (state_dir {}); a new feed needs a larger serial",
                    feed.serial,
                    in_force.serial,
                    config.state_dir.display()
                ));
            }
            match policy::evaluate(
                feed,
                &config.guardrails.to_policy(),
                OffsetDateTime::now_utc(),
            ) {
                Ok(evaluation) => {
                    for order in evaluation
                        .orders
                        .iter()
                        .filter(|o| o.state == OrderState::Refused)
                    {
                        for reason in &order.reasons {
                            problems.push(format!("order {}: refused: {reason}", order.id));
                        }
                    }
                    summary.push_str(&format!(
                        ", {} in force now",
                        evaluation.count(OrderState::InForce)
                    ));
                }
                Err(err) => problems.push(format!("feed refused whole: {err}")),
            }
        }
    }

    let name = feed_path.display();
    if problems.is_empty() {
        let signature_note = if public_key.is_some() {
            "signature verified"
        } else {
            "signature not checked (no --public-key)"
        };
        println!("{name}: valid ({summary}; {signature_note})");
        Ok(Exit::Ok)
    } else {
        println!("{name}: invalid, {} problem(s):", problems.len());
        for problem in &problems {
            println!("  {problem}");
        }
        Ok(Exit::Invalid)
    }
}
