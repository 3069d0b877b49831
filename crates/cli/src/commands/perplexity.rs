//! `sieve perplexity`.

use anyhow::{Context, Result, bail};
use sieve_core::policy::DecodeFile;
use sieve_core::{Positions, ScorerSpec};
use sieve_eval::perplexity;

use crate::args::PerplexityArgs;

pub fn run(args: PerplexityArgs) -> Result<()> {
    let mut policy = super::load_policy(&args.policy)?;
    if args.streaming {
        if let Some(budget) = args.budget {
            // The policy's own decode eviction with this budget; without one, StreamingLLM:
            // 4 sinks plus the most recent tokens.
            let mut file = policy.to_file();
            let (name, decode) = match file.decode.take() {
                // Its recent tokens at most half the budget (a preset's even split at its
                // own budget stays an even split at a smaller one).
                Some(d) => {
                    (format!("{}-{budget}", policy.name), DecodeFile { budget, recent: d.recent.min(budget / 2), ..d })
                }
                None => (
                    format!("streaming-{budget}"),
                    DecodeFile {
                        scorer: Some(ScorerSpec::Recency {}),
                        budget,
                        every: 1,
                        sinks: 4,
                        recent: 0,
                        selection: Default::default(),
                        positions: Positions::Cache,
                    },
                ),
            };
            file.name = Some(name);
            file.decode = Some(decode);
            policy = file.validate().context("invalid --budget")?;
        } else if policy.decode.is_none() {
            bail!("--streaming needs --budget or a policy with a [decode] section");
        }
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{} is not valid UTF-8 (offset {})", args.file.display(), e.utf8_error().valid_up_to())
    })?;
    let mut model = super::load_model(&args.runtime.model)?;
    let tokens = model.tokenizer.encode(&text)?;
    let runtime = super::load_runtime(&args.runtime, &mut model)?;
    let report = if args.streaming {
        perplexity::streaming_perplexity(&runtime, &policy, &tokens, args.length)?
    } else {
        // A model that wants a BOS gets one at the start of every window.
        let bos = model.tokenizer.bos.filter(|&b| model.tokenizer.add_bos && tokens.first() == Some(&b));
        let text = if bos.is_some() { &tokens[1..] } else { &tokens[..] };
        let (context, continuation, windows) = (args.context, args.continuation, args.windows);
        perplexity::compressed_perplexity_with_bos(&runtime, &policy, text, bos, context, continuation, windows)
            .context("--context, --continuation, --windows")?
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let kv: usize = report.windows.iter().map(|w| w.kv_bytes).sum();
        let kv_full: usize = report.windows.iter().map(|w| w.kv_bytes_unpruned).sum();
        println!(
            "{} perplexity {:.3} over {} tokens in {} window(s) | policy {} | KV {:.1}% of unpruned",
            report.protocol,
            report.perplexity,
            report.scored,
            report.windows.len(),
            report.policy,
            100.0 * kv as f64 / kv_full.max(1) as f64
        );
        // A streaming run past the context: one line per context length of text.
        if report.protocol == "streaming" && report.windows.len() > 1 {
            for w in &report.windows {
                let ppl = (w.nll / w.scored.max(1) as f64).exp();
                let first = w.start.max(1);
                println!("  tokens {first}..{}: perplexity {ppl:.3}", first + w.scored);
            }
        }
    }
    Ok(())
}
