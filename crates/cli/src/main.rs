//! `sieve`: run LLMs with dynamic token pruning.

mod args;
mod backends;
mod commands;
mod report;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Generate(a) => commands::generate::run(a),
        args::Command::Chat(a) => commands::chat::run(a),
        args::Command::Inspect(a) => commands::inspect::run(a),
        args::Command::Perplexity(a) => commands::perplexity::run(a),
        args::Command::Fetch => commands::fetch(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
