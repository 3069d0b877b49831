"""Writes `crates/runtime/tests/fixtures/gemma3.json`: what Hugging Face transformers, an
implementation sieve did not write, computes with Gemma 3 270M (gemma-3-270m-q4_k_m.gguf,
dequantized by transformers to float32, eager attention), for sieve's Gemma 3 tests.

The fixture holds:
- "config": what transformers' `model.config` says of the settings a Gemma 3 forward pass
  depends on (sliding window and layer types, RoPE bases, query scaling, softcaps,
  activation, norm epsilon, head size) and the embedding's scale, as transformers reports them;
- "tokenizer": the ids of probe strings (with the BOS id 2 first) chosen to stress a
  SentencePiece tokenizer: spaces, tabs, newlines, CRLF, digits, accents, CJK, an emoji,
  characters outside the vocabulary (byte fallback) and the chat template's special tokens;
- "wikitext": the count, FNV-1a hash and first ids of the first 4 x 1,151 ids of WikiText-2's
  test split, tokenized whole without special tokens (the ids the perplexity below scores);
- "logits": for the prompt below, at every position, the logsumexp of the logits, their
  argmax and the float32 logits at the ids `ids` (a fixed sample of the vocabulary plus every
  position's top 8), and the greedy continuation of 8 tokens;
- "perplexity": the protocol context 1,024, continuation 128, 4 windows, with a BOS per
  window: window w is [BOS] + text ids [1151 w, 1151 (w + 1)), its 128 last tokens are scored
  by one forward pass over all 1,152 (more than the 512 of the local layers' sliding window);
- "transformers_gguf_tokenizer": what the tokenizer transformers builds from the GGUF
  (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) gives instead, for the record.

Why two tokenizers: Gemma's tokenizer is a SentencePiece BPE model, but transformers 5.2.0
converts a Gemma GGUF's vocabulary into a `Unigram` model over the BPE ranks (the scores)
and adds no BOS (huggingface/transformers#41494). Its Viterbi search over ranks cuts words
into short pieces ("Hello world" -> Hello, _w, or, ld instead of Hello, _world) and almost
doubles WikiText's token count, so it is not the tokenizer the model was trained with. The
ids the fixture's main sections use come from transformers' own `GemmaTokenizer` (the class
a Hugging Face Gemma checkpoint loads: BPE, byte fallback, " " -> "_" normalizer, BOS added)
built from the GGUF's vocabulary the way transformers builds it from a SentencePiece model:
merges from `generate_merges` (ranked by id, which for Gemma orders them as the scores do),
control tokens (type 3) as special added tokens, user-defined ones (type 4: newline, space
and tab runs, HTML tags) as non-special added tokens, all unnormalized. These ids agree with
llama.cpp's SentencePiece algorithm (highest-scoring adjacent pair merged first) on the whole
WikiText-2 test text and with published Gemma 3 ids ("Hello world" -> 2, 9259, 1902).

Run by `benches/scripts/gemma-fixtures.sh`, which installs the pinned torch and transformers
(and gguf) into a virtual environment in the cache. Not run by CI.
"""

import json
import math
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

from fixture_hash import fnv1a64

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars

import torch  # noqa: E402
from tokenizers import AddedToken  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GemmaTokenizer  # noqa: E402
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: E402
from transformers.tokenization_utils_base import generate_merges  # noqa: E402

CONTEXT, CONTINUATION, WINDOWS = 1024, 128, 4
TEXT_PER_WINDOW = CONTEXT + CONTINUATION - 1  # with the BOS, 1,152 inputs per window
PROMPT = "The capital of France is Paris. The capital of Germany is"
GENERATED = 8
TOP = 8
PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "several    spaces   between  words",
    "tab\tand\t\ttabs\n\nnew paragraph\n",
    "line one\r\nline two\r\n",
    "digits 2026 and 3.14159",
    "café naïve Zürich",
    "東京は日本の首都です",
    "emoji 😀 and 🧑‍💻",
    # Not in the vocabulary: a Tamil conjunct, an Egyptian hieroglyph and an Old Cyrillic
    # letter fall back (partly) to UTF-8 bytes <0x..>.
    "\u0b95\u0bcd\u0bb7 \U00013000 \ua66e",
    "<start_of_turn>user\nHi<end_of_turn>",
]



def gemma_tokenizer(gguf_path):
    """transformers' GemmaTokenizer over the GGUF's vocabulary, as transformers builds it from
    a SentencePiece BPE model (`SentencePieceExtractor.extract` with the BPE model)."""
    spm = load_gguf_checkpoint(str(gguf_path))["tokenizer"]
    tokens, types = spm["tokens"], spm["token_type"]
    vocab = {token: i for i, token in enumerate(tokens)}
    added = [
        AddedToken(token, normalized=False, special=kind == 3)
        for token, kind in zip(tokens, types)
        if kind in (3, 4)
    ]
    return GemmaTokenizer(
        vocab=vocab, merges=generate_merges(vocab), additional_special_tokens=added, add_bos_token=True
    )


def window_nlls(model, text_ids, bos):
    """Per-window continuation NLLs: [BOS] + 1,151 text ids, the last 128 scored."""
    windows = []
    for w in range(WINDOWS):
        ids = [bos] + text_ids[w * TEXT_PER_WINDOW : (w + 1) * TEXT_PER_WINDOW]
        assert len(ids) == CONTEXT + CONTINUATION
        with torch.no_grad():
            # Logits at positions 1023..1151; those at 1023..1150 predict inputs 1024..1151.
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=CONTINUATION + 1).logits[0]
        logp = torch.log_softmax(logits[:CONTINUATION].float(), -1)
        nll = -logp[torch.arange(CONTINUATION), torch.tensor(ids[CONTEXT:])]
        windows.append([float(x) for x in nll])
    return windows


def config_dump(model):
    config = model.config
    keys = [
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        "sliding_window", "sliding_window_pattern", "layer_types", "rope_theta",
        "rope_local_base_freq", "rope_parameters", "rope_scaling", "query_pre_attn_scalar",
        "final_logit_softcapping", "attn_logit_softcapping", "hidden_activation", "rms_norm_eps",
        "tie_word_embeddings", "use_bidirectional_attention", "attention_bias",
    ]
    out = {}
    for key in keys:
        if hasattr(config, key):
            value = getattr(config, key)
            out[key] = json.loads(json.dumps(value, default=str))
    embed = model.get_input_embeddings()
    out["embedding_class"] = type(embed).__name__
    scale = getattr(embed, "embed_scale", None)
    out["embed_scale"] = float(scale) if scale is not None else None
    out["norm_class"] = type(model.model.norm).__name__
    return out


def main():
    gguf_path, text_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.time()
    converted = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = gemma_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(f"loaded ({time.time() - started:.0f} s)", flush=True)
    bos = tokenizer.bos_token_id
    assert bos == 2

    # As stored: the file's CRLF line ends are part of the text sieve reads.
    with open(text_path, encoding="utf-8", newline="") as f:
        text = f.read()
    needed = WINDOWS * TEXT_PER_WINDOW
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(text_ids) >= needed, f"{len(text_ids)} tokens, {needed} needed"

    fixture = {
        "versions": {name: version(name) for name in ("transformers", "torch", "tokenizers", "gguf")},
        "model": gguf_path.name,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "config": config_dump(model),
        "tokenizer": [{"text": p, "ids": tokenizer(p)["input_ids"]} for p in PROBES],
        "wikitext": {"text": "wikitext-2/wiki.test.raw", "count": needed,
                     "fnv1a64": fnv1a64(text_ids[:needed]), "first": text_ids[:32],
                     "total": len(text_ids)},
    }
    for probe in fixture["tokenizer"]:
        assert probe["ids"][0] == bos and tokenizer.decode(probe["ids"][1:]) == probe["text"], probe

    # Logits of the prompt at every position, and the greedy continuation.
    prompt = tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0].float()
    top = torch.topk(logits, TOP, dim=-1).indices
    ids = sorted(set(range(16)) | set(range(0, logits.shape[-1], 4099)) | set(top.flatten().tolist()))
    fixture["logits"] = {
        "prompt": PROMPT,
        "input_ids": prompt,
        "ids": ids,
        "lse": [float(x) for x in torch.logsumexp(logits, -1)],
        "argmax": logits.argmax(-1).tolist(),
        "top": top.tolist(),
        "values": [[float(x) for x in row] for row in logits[:, ids]],
    }
    generated = list(prompt)
    for _ in range(GENERATED):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([generated])).logits[0, -1]
        generated.append(int(last.argmax()))
    assert generated[len(prompt)] == fixture["logits"]["argmax"][-1]
    fixture["logits"]["greedy"] = generated[len(prompt):]
    fixture["logits"]["greedy_text"] = tokenizer.decode(generated[len(prompt):])
    print(f"greedy: {fixture['logits']['greedy_text']!r} ({time.time() - started:.0f} s)", flush=True)

    nlls = window_nlls(model, text_ids, bos)
    sums = [sum(w) for w in nlls]
    fixture["perplexity"] = {
        "protocol": {"context": CONTEXT, "continuation": CONTINUATION, "windows": WINDOWS,
                     "bos_per_window": True, "text_per_window": TEXT_PER_WINDOW},
        "perplexity": math.exp(sum(sums) / (WINDOWS * CONTINUATION)),
        "nll": sums,
        "token_nll": nlls,
    }
    print(f"perplexity: {fixture['perplexity']['perplexity']:.4f} ({time.time() - started:.0f} s)", flush=True)

    # The tokenizer transformers converts from the GGUF (Unigram over the BPE ranks, no BOS).
    converted_ids = converted(text, add_special_tokens=False)["input_ids"]
    converted_sums = [sum(w) for w in window_nlls(model, converted_ids, bos)]
    fixture["transformers_gguf_tokenizer"] = {
        "model": json.loads(converted.backend_tokenizer.to_str())["model"]["type"],
        "probes": [converted(p)["input_ids"] for p in PROBES],
        "wikitext": {"count": needed, "fnv1a64": fnv1a64(converted_ids[:needed]),
                     "first": converted_ids[:32], "total": len(converted_ids)},
        "perplexity": math.exp(sum(converted_sums) / (WINDOWS * CONTINUATION)),
        "nll": converted_sums,
    }
    print(f"with the converted tokenizer: {fixture['transformers_gguf_tokenizer']['perplexity']:.4f} "
          f"({time.time() - started:.0f} s)", flush=True)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(fixture, separators=(",", ":"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
