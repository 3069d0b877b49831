//! The tokenizer and chat template built from the default model's GGUF metadata.

use sieve_engine::Model;
use sieve_engine::template::Message;

fn model() -> Model {
    let path = sieve_engine::fetch::require_default_model().unwrap_or_else(|e| panic!("{e}"));
    Model::load(&path).unwrap()
}

#[test]
fn gguf_tokenizer_reproduces_reference_ids() {
    let m = model();
    let text = "Once upon a time, there was a little robot.";
    let ids = m.tokenizer.encode(text).unwrap();
    assert_eq!(ids, vec![6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 30]);
    assert_eq!(m.tokenizer.decode(&ids).unwrap(), text);
    // Digits are split one by one; special tokens in text map to their ids.
    assert_eq!(m.tokenizer.encode("2024").unwrap().len(), 4);
    assert_eq!(m.tokenizer.encode("<|im_start|>user").unwrap()[0], 1);
    assert_eq!(m.tokenizer.eos, vec![2]);
    assert!(!m.tokenizer.add_bos);
}

#[test]
fn chat_template_renders_chatml() {
    let m = model();
    let text = m.render_chat(&[Message::new("user", "Hi")]).unwrap();
    assert!(text.starts_with("<|im_start|>system\n"), "{text}");
    assert!(text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{text}");
}

#[test]
fn gguf_and_safetensors_give_the_same_weights() {
    // Round trip through the Hugging Face layout: write the GGUF weights as safetensors
    // with config.json and tokenizer.json, load the directory, compare.
    let m = model();
    let dir = std::env::temp_dir().join(format!("sieve-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    sieve_engine::export::write_hf_dir(&m, &dir).unwrap();
    let hf = Model::load(&dir).unwrap();
    assert_eq!(hf.config, m.config);
    assert_eq!(hf.weights.layers[7].q, m.weights.layers[7].q);
    assert_eq!(hf.weights.layers[29].down, m.weights.layers[29].down);
    assert_eq!(hf.weights.embed, m.weights.embed);
    let text = "Once upon a time, there was a little robot.";
    assert_eq!(hf.tokenizer.encode(text).unwrap(), m.tokenizer.encode(text).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}
