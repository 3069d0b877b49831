//! `sieve`: run LLMs with dynamic token pruning.

mod args;
mod commands;
mod report;
#[cfg(not(feature = "tch"))]
mod tch_launcher;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    #[cfg(not(feature = "tch"))]
    if cli.command.backend() == Some(sieve_runtime::BackendKind::Tch) {
        return match tch_launcher::delegate(std::env::args_os().skip(1).collect()) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("error: {}", one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.command {
        args::Command::Generate(a) => commands::generate::run(a),
        args::Command::Chat(a) => commands::chat::run(a),
        args::Command::Inspect(a) => commands::inspect::run(a),
        args::Command::Perplexity(a) => commands::perplexity::run(a),
        args::Command::Passkey(a) => commands::passkey::run(a),
        args::Command::Bench(a) => commands::bench::run(a),
        args::Command::DeviceCheck(a) => commands::device_check::run(a),
        args::Command::Serve(a) => commands::serve::run(a),
        args::Command::Fetch(a) => commands::fetch(&a.name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line. A cause whose text is already shown (error types
/// whose message includes their source's) is not repeated, and line breaks inside a
/// message become spaces.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
