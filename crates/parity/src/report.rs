//! The parity report for people: one markdown table row per pair, prompt and policy.

use crate::Report;

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

/// The comparisons as a markdown table, then the violations (or a line saying there are none).
pub fn table(r: &Report) -> String {
    let mut out = String::from(
        "| pair | prompt | policy | logits max abs | logits cosine | kept exact | kept Jaccard | greedy tokens agreeing | ppl rel diff | KV bytes equal |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for c in &r.comparisons {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.9} | {:.3} | {:.4} | {}/{}{} | {} | {} |\n",
            c.pair,
            c.prompt,
            c.policy,
            c.logits_max_abs,
            c.logits_cosine,
            c.kept_exact,
            c.kept_jaccard,
            c.generation_prefix,
            crate::suite::GENERATED,
            c.generation_gap.map_or_else(String::new, |gap| format!(", then {gap:.1e} apart")),
            c.perplexity_rel.map_or_else(|| "-".into(), |v| format!("{v:.1e}")),
            yes(c.kv_bytes[0] == c.kv_bytes[1] && c.kv_bytes_end[0] == c.kv_bytes_end[1]),
        ));
    }
    if r.violations.is_empty() {
        out.push_str(&format!("\nparity: every measure within its tolerance ({} comparisons)\n", r.comparisons.len()));
    } else {
        out.push_str(&format!("\nparity FAILED: {} measures past their tolerance\n", r.violations.len()));
        for v in &r.violations {
            out.push_str(&format!("- {v}\n"));
        }
    }
    out
}
