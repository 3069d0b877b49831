//! `sieve chat`: multi-turn chat in the terminal. Each turn renders the whole
//! conversation with the chat template and feeds only the tokens the KV cache does not
//! already hold.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use sieve_engine::Session;
use sieve_engine::template::Message;

use crate::args::ChatArgs;

pub fn run(args: ChatArgs) -> Result<()> {
    let policy = super::load_policy(&args.policy)?;
    let options = super::generate_options(&args.sampling);
    options.sampling.validate().context(super::SAMPLING_FLAGS)?;
    let mut model = super::load_model(&args.runtime.model)?;
    if model.chat_template.is_none() {
        bail!("{} has no chat template", model.path.display());
    }
    let runtime = super::load_runtime(&args.runtime, &mut model)?;
    {
        let mut session = Session::new(&runtime, policy.clone())?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s.as_str()));
        }
        let mut fed: Vec<u32> = Vec::new();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        eprintln!("sieve chat: type a message, /exit or end of input to quit");
        loop {
            eprint!("> ");
            let Some(line) = lines.next() else { break };
            let line = line?;
            let line = line.trim();
            if line == "/exit" || line == "/quit" {
                break;
            }
            if line.is_empty() {
                continue;
            }
            messages.push(Message::new("user", line));
            let ids = model.tokenizer.encode(&model.render_chat(&messages)?)?;
            // Reuse the cached prefix; forget what differs (re-tokenised replies).
            let mut common = fed.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
            // A model with local layers cannot go back further than their window: start over.
            if session.truncate(common).is_err() {
                session = Session::new(&runtime, policy.clone())?;
                common = 0;
            }
            fed.truncate(common);
            let mut out = std::io::stdout().lock();
            let g = sieve_engine::generate(&mut session, &model.tokenizer, &ids[common..], &options, &mut |p| {
                let _ = out.write_all(p.as_bytes()).and_then(|_| out.flush());
            })?;
            println!();
            eprintln!(
                "[sieve] {} new prompt tokens ({} reused) | ttft {:.0} ms | {:.1} tokens/s | KV {:.2} MiB",
                ids.len() - common,
                common,
                g.stats.ttft_ms,
                g.stats.decode_tok_s,
                session.kv_bytes() as f64 / 1048576.0
            );
            fed.extend_from_slice(&ids[common..]);
            fed.extend_from_slice(&g.tokens);
            messages.push(Message::new("assistant", g.text));
        }
    }
    Ok(())
}
