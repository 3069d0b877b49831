//! `sieve generate`.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use sieve_engine::template::Message;
use sieve_engine::{Model, Session};

use crate::args::GenerateArgs;
use crate::report;

fn read_prompt(args: &GenerateArgs) -> Result<String> {
    let text = if let Some(p) = &args.prompt {
        p.clone()
    } else if let Some(path) = &args.prompt_file {
        let bytes = std::fs::read(path).with_context(|| format!("reading prompt file {}", path.display()))?;
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "prompt file {} is not valid UTF-8 (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?
    } else if !std::io::stdin().is_terminal() {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("reading the prompt from stdin")?;
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!("the prompt on stdin is not valid UTF-8 (offset {})", e.utf8_error().valid_up_to())
        })?
    } else {
        bail!("no prompt: give it as an argument, with --prompt-file, or on stdin");
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty");
    }
    Ok(text)
}

/// The prompt's token ids: through the chat template unless `--raw` or the model has none.
pub fn prompt_ids(model: &Model, text: &str, raw: bool, system: Option<&str>) -> Result<Vec<u32>> {
    let rendered = if raw || model.chat_template.is_none() {
        text.to_string()
    } else {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", text));
        model.render_chat(&messages).context("the model has no chat template; send the prompt with --raw")?
    };
    Ok(model.tokenizer.encode(&rendered)?)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let policy = super::load_policy(&args.policy)?;
    let options = super::generate_options(&args.sampling);
    options.sampling.validate().context(super::SAMPLING_FLAGS)?;
    let text = read_prompt(&args)?;
    let mut model = super::load_model(&args.runtime.model)?;
    let ids = prompt_ids(&model, &text, args.raw, args.system.as_deref())?;
    let weight_bytes = model.weights.bytes();
    let runtime = super::load_runtime(&args.runtime, &mut model)?;
    let mut session = Session::new(&runtime, policy)?;
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let mut generation = sieve_engine::generate(&mut session, &model.tokenizer, &ids, &options, &mut |piece| {
        if !json {
            // A closed stdout (e.g. `| head`) ends the output, not the run.
            let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
        }
    })?;
    generation.stats.weight_bytes = weight_bytes;
    if args.json {
        println!("{}", report::json(&generation));
    } else {
        println!();
        report::print_stats(&generation);
    }
    Ok(())
}
