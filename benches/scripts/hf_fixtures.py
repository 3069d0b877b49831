"""Writes the Hugging Face checkpoint fixtures of `crates/runtime/tests/checkpoints.rs`.

Each fixture is a tiny, randomly initialised model of one architecture that sieve claims,
written by transformers itself (`save_pretrained`, the layout of the pinned version: its
`config.json`, safetensors, `generation_config.json`, and a tokenizer with its
`tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`), beside
`expected.json`: the token ids transformers' tokenizer gives a fixed prompt and the logits
transformers computes for them (every position, float32).

Run by `benches/scripts/hf-fixtures.sh`, which installs the pinned transformers and torch
into a virtual environment in the cache. Not run by CI: CI reads the committed output.
"""

import json
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PROMPT = "the quick brown fox jumps over the lazy dog and the cat sat on the mat"
WORDS = sorted(set(PROMPT.split()) | set("a an of to in is it was for on with as by at from".split()))
SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 128
TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def tokenizer():
    """A word-level tokenizer of VOCAB entries: the special tokens, the prompt's words and
    filler words, split on whitespace."""
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in WORDS:
        vocab[w] = len(vocab)
    while len(vocab) < VOCAB:
        vocab[f"w{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = TEMPLATE
    return fast


def randomise(model, seed):
    """Weights drawn at a scale that makes the logits vary by whole units, and norm gains
    and biases away from their initial 1 and 0, so that a misread tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def common(**extra):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    base.update(extra)
    return base


def fixtures():
    """(name, model class, config) of every fixture."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    return [
        # Llama / SmolLM2 shape: tied embedding, grouped-query attention, rope_theta 1e5.
        ("llama", LlamaForCausalLM, LlamaConfig(**common(rope_parameters={"rope_type": "default", "rope_theta": 100000.0}))),
        # Llama 3: rotary scaling, an untied LM head and a head_dim that is not hidden / heads.
        ("llama3", LlamaForCausalLM, LlamaConfig(**common(rope_parameters=llama3, tie_word_embeddings=False, head_dim=32))),
        # Mistral without a sliding window (v0.2 and later).
        ("mistral", MistralForCausalLM, MistralConfig(**common(sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))),
        # Qwen2: q/k/v biases, untied head.
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(**common(tie_word_embeddings=False, use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))),
        # Gemma 3: q/k norms, norms after attention and MLP, GELU-tanh, scaled embeddings, a
        # local layer whose window of 4 positions the prompt crosses, a rotary base per layer
        # kind, query_pre_attn_scalar unlike head_dim.
        ("gemma3", Gemma3ForCausalLM, Gemma3TextConfig(**common(
            head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=24, hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None, attn_logit_softcapping=None,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}))),
    ]


def main():
    out = Path(sys.argv[1])
    tok = tokenizer()
    for seed, (name, cls, config) in enumerate(fixtures()):
        torch.manual_seed(seed)
        model = cls(config).to(torch.float32).eval()
        randomise(model, seed)
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        chat = tok.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=False, add_generation_prompt=True)
        expected = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "prompt": PROMPT,
            "ids": ids,
            "chat": chat,
            "eos": [config.eos_token_id],
            "logits": [[round(float(v), 7) for v in row] for row in logits],
        }
        (d / "expected.json").write_text(json.dumps(expected) + "\n")
        print(f"{name}: {len(ids)} tokens, logits in [{logits.min():.3f}, {logits.max():.3f}]")


if __name__ == "__main__":
    main()
