//! `sieve inspect`.

use anyhow::Result;

use crate::args::InspectArgs;

pub fn run(args: InspectArgs) -> Result<()> {
    let model = super::load_model(&args.model)?;
    let c = &model.config;
    println!("model        {}", model.path.display());
    println!("architecture {:?}", c.arch);
    println!("layers       {}", c.n_layers);
    println!("heads        {} query, {} key/value (group of {})", c.n_heads, c.n_kv_heads, c.group());
    println!("hidden       {} (head dim {}, MLP {})", c.hidden, c.head_dim, c.ffn);
    println!("vocabulary   {}", c.vocab);
    println!("context      {}", c.context);
    println!("rope theta   {}", c.rope_theta);
    println!("rms eps      {:e}", c.rms_eps);
    let formats: Vec<String> = model.weights.formats().iter().map(|(f, n)| format!("{n} {f}")).collect();
    println!(
        "weights      {:.1} MiB as stored ({}), {:.1} MiB as f32",
        model.weights.bytes() as f64 / 1048576.0,
        formats.join(", "),
        model.weights.tensors().map(|w| w.shape.iter().product::<usize>()).sum::<usize>() as f64 * 4.0 / 1048576.0
    );
    println!(
        "KV per token {} bytes per layer, {} bytes for all layers",
        c.kv_bytes_per_token_layer(),
        c.kv_bytes_per_token_layer() * c.n_layers
    );
    let t = &model.tokenizer;
    let name = |id: Option<u32>| {
        id.map(|i| format!("{i} {:?}", t.token(i).unwrap_or_default())).unwrap_or_else(|| "none".into())
    };
    println!(
        "tokenizer    {} tokens, bos {}, eos {}, add bos {}",
        t.vocab_size(),
        name(t.bos),
        name(t.eos.first().copied()),
        t.add_bos
    );
    println!("chat         {}", if model.chat_template.is_some() { "template present" } else { "no template" });
    let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
    for (_, dtype, _) in &model.tensor_summary {
        *by_type.entry(dtype.as_str()).or_default() += 1;
    }
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!("tensors      {} ({})", model.tensor_summary.len(), types.join(", "));
    for (name, dtype, shape) in
        model.tensor_summary.iter().filter(|(n, ..)| !n.starts_with("blk.") || n.starts_with("blk.0."))
    {
        println!("  {name:<32} {dtype:<6} {shape:?}");
    }
    if let Some(dir) = &args.export_onnx {
        export_onnx(&model, dir)?;
    }
    Ok(())
}

#[cfg(feature = "ort")]
fn export_onnx(model: &sieve_engine::Model, dir: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let files = sieve_ort::export_onnx(&model.config, &model.weights, dir)
        .with_context(|| format!("writing the ONNX graphs to {}", dir.display()))?;
    println!("onnx         {} graphs written to {}", files.len(), dir.display());
    Ok(())
}

#[cfg(not(feature = "ort"))]
fn export_onnx(_: &sieve_engine::Model, _: &std::path::Path) -> Result<()> {
    anyhow::bail!("--export-onnx needs the `ort` backend, which is not compiled into this binary")
}
