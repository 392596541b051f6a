//! The command line (contract §3): one module per subcommand.
//!
//! Exit codes: 0 success, 1 a checked thing is invalid or refused, 2 usage or
//! environment error. Every module returns an [`Exit`]; only [`main`] prints
//! errors and turns them into process exit codes.

mod check;
mod detach;
mod plan;
mod run;
mod status;
mod validate;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use crate::{
    config::Config,
    feed::{self, Feed},
    policy::{self, Evaluation},
    state::StateDir,
};

/// A network-edge blocking appliance: enforces a regulator's signed block
/// orders with XDP.
#[derive(Debug, Parser)]
#[command(name = "blocker", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: attach, sync the feed, enforce, serve metrics.
    Run {
        /// The operator's config file (YAML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a feed: syntax, semantics, signature (with --public-key),
    /// guardrails (with --config). Exit 0 when valid, 1 otherwise.
    Validate {
        /// The feed file (YAML).
        feed: PathBuf,
        /// The regulator's minisign public key; checks FEED.minisig.
        #[arg(long, value_name = "KEY")]
        public_key: Option<PathBuf>,
        /// The signature file, when not FEED.minisig.
        #[arg(long, value_name = "SIG")]
        signature: Option<PathBuf>,
        /// The operator's config: checks the feed against its guardrails
        /// (protected prefixes, rung limits, max_prefixes).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show what applying FEED would change against what is in force.
    Plan {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The candidate feed.
        feed: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Interfaces and attach mode, feed serial in force, orders by state,
    /// prefixes loaded, last sync.
    Status {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Which orders in force match ADDRESS, and in which direction.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// An IPv4 or IPv6 address.
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the XDP program and the pins: the only command that lifts
    /// enforcement.
    Detach {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff).
    #[command(hide = true)]
    Man,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok,
    /// The checked thing is invalid or refused.
    Invalid,
    /// Usage or environment error.
    Environment,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::Invalid => ExitCode::from(1),
            Exit::Environment => ExitCode::from(2),
        }
    }
}

/// An environment problem: a file that cannot be read, a missing pin.
/// Printed as `blocker: <message>` with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

impl EnvError {
    fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }

    /// An error with its whole chain of causes: `a: b: c`.
    fn chain(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        Self(text)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Validate {
            feed,
            public_key,
            signature,
            config,
        } => validate::validate(
            &feed,
            public_key.as_deref(),
            signature.as_deref(),
            config.as_deref(),
        ),
        Command::Plan { config, feed, json } => plan::plan(&config, &feed, json),
        Command::Status { config, json } => status::status(&config, json),
        Command::Check {
            config,
            address,
            json,
        } => check::check(&config, &address, json),
        Command::Detach { config } => detach::detach(&config),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "blocker", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map(|()| Exit::Ok)
                .map_err(|e| EnvError::new(format!("writing the manual page: {e}")))
        }
    };
    match outcome {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("blocker: {err}");
            Exit::Environment.into()
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, EnvError> {
    Config::load(path).map_err(EnvError::new)
}

/// The feed in force as the daemon left it in `state_dir`, evaluated at `now`.
struct InForceView {
    feed: Feed,
    evaluation: Evaluation,
}

fn in_force_view(config: &Config, now: OffsetDateTime) -> Result<Option<InForceView>, EnvError> {
    let Some(state) = StateDir::existing(&config.state_dir) else {
        return Ok(None);
    };
    let Some(saved) = state.load_feed().map_err(EnvError::new)? else {
        return Ok(None);
    };
    let feed = feed::parse(&saved.feed).map_err(|err| {
        EnvError::new(format!(
            "the feed saved in {} no longer parses: {err}",
            state.path().display()
        ))
    })?;
    let evaluation =
        policy::evaluate(&feed, &config.guardrails.to_policy(), now).map_err(EnvError::new)?;
    Ok(Some(InForceView { feed, evaluation }))
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

fn format_unix(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix).map_or_else(|_| unix.to_string(), format_time)
}

/// `count` with `one` or `many` after it, as the count calls for
/// ("1 order", "3 orders").
fn counted<T: std::fmt::Display + PartialEq + From<u8>>(count: T, one: &str, many: &str) -> String {
    let many = if count == T::from(1) { one } else { many };
    format!("{count} {many}")
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn a_count_of_one_takes_the_singular() {
        assert_eq!(counted(1usize, "order", "orders"), "1 order");
        assert_eq!(counted(0usize, "order", "orders"), "0 orders");
        assert_eq!(counted(18u128, "address", "addresses"), "18 addresses");
        assert_eq!(counted(1u128, "address", "addresses"), "1 address");
    }
}
