"""Writes `crates/runtime/tests/fixtures/kvpress.json`: what NVIDIA kvpress, an implementation
sieve did not write, keeps and scores on the default model, for `crates/runtime/tests/kvpress.rs`.

For each press (SnapKV, TOVA, KNorm, StreamingLLM, ExpectedAttention) at compression
ratios 0.5 and 0.75, and for the unpruned model:
- the kept positions of every layer and KV head when the first 1,024 tokens of
  WikiText-2's test split are compressed (a bitset per head, base64), with the positions
  whose score ties the cut (equivalent choices);
- the compressed-context perplexity of 8 windows: 1,024 context tokens compressed by the
  press, then 128 continuation tokens scored against the compressed cache, windows
  stepping by 1,152 tokens from token 0 (the protocol of `sieve perplexity --context 1024
  --continuation 128 --windows 8`).
The model is the GGUF sieve uses by default, dequantized by transformers to float32; the
text is tokenized whole without special tokens, and the fixture records a hash of the ids
so that the test can check that sieve's tokenizer agrees.

Run by `benches/scripts/kvpress-fixtures.sh`, which installs the pinned torch,
transformers and kvpress into a virtual environment in the cache. Not run by CI.
"""

import base64
import json
import math
import sys
import time
from pathlib import Path

from fixture_hash import fnv1a64

import kvpress
import torch
import transformers
from kvpress import ExpectedAttentionPress, KnormPress, SnapKVPress, StreamingLLMPress, TOVAPress
from kvpress.utils import compute_n_kept
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

CONTEXT, CONTINUATION, WINDOWS = 1024, 128, 8
RATIOS = [0.5, 0.75]
PRESSES = {
    "snapkv": lambda r: SnapKVPress(compression_ratio=r, window_size=64, kernel_size=5),
    "tova": lambda r: TOVAPress(compression_ratio=r),
    "knorm": lambda r: KnormPress(compression_ratio=r),
    "streaming": lambda r: StreamingLLMPress(compression_ratio=r, n_sink=4),
    "expected-attention": lambda r: ExpectedAttentionPress(compression_ratio=r),
}



def bitset(positions, n):
    bits = bytearray(n // 8)
    for p in positions:
        bits[p // 8] |= 1 << (p % 8)
    return base64.b64encode(bytes(bits)).decode()


def capture(press):
    """Wraps the press's `score` (its hooks call it through the instance) to keep every
    layer's scores `[kv_heads, k]`."""
    scores = {}
    inner = press.score

    def score(module, hidden_states, keys, values, attentions, kwargs):
        s = inner(module, hidden_states, keys, values, attentions, kwargs)
        scores[module.layer_idx] = s[0].detach().float().clone()
        return s

    press.score = score
    return scores


def window_nll(model, ids, start, press):
    """Sum of the continuation's negative log-likelihoods for the window at `start`."""
    context = torch.tensor([ids[start : start + CONTEXT]])
    cont = ids[start + CONTEXT : start + CONTEXT + CONTINUATION]
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            out = model(input_ids=context, past_key_values=cache, use_cache=True)
        else:
            with press(model):
                out = model(input_ids=context, past_key_values=cache, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)[cont[0]]
        positions = torch.arange(CONTEXT, CONTEXT + CONTINUATION - 1).unsqueeze(0)
        rest = model(input_ids=torch.tensor([cont[:-1]]), past_key_values=cache, position_ids=positions)
        logp = torch.log_softmax(rest.logits[0].float(), -1)
        tail = logp[torch.arange(CONTINUATION - 1), torch.tensor(cont[1:])]
    return -(first + tail.sum()).item()


def main():
    gguf, text_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    # As stored: the file's CRLF line ends are part of the text sieve reads.
    with open(text_path, encoding="utf-8", newline="") as f:
        text = f.read()
    needed = WINDOWS * (CONTEXT + CONTINUATION)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:needed]
    assert len(ids) == needed, f"{len(ids)} tokens, {needed} needed"
    fixture = {
        "versions": {"kvpress": kvpress.__version__ if hasattr(kvpress, "__version__") else "0.5.5",
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "model": gguf.name,
        "text": "wikitext-2/wiki.test.raw",
        "protocol": {"context": CONTEXT, "continuation": CONTINUATION, "windows": WINDOWS},
        "tokens": {"count": needed, "fnv1a64": fnv1a64(ids), "first": ids[:16]},
        "unpruned": None,
        "presses": {},
    }
    started = time.time()
    nlls = [window_nll(model, ids, w * (CONTEXT + CONTINUATION), None) for w in range(WINDOWS)]
    fixture["unpruned"] = {"perplexity": math.exp(sum(nlls) / (WINDOWS * CONTINUATION)), "nll": nlls}
    print(f"unpruned: {fixture['unpruned']['perplexity']:.4f} ({time.time() - started:.0f} s)", flush=True)
    for name, make in PRESSES.items():
        for ratio in RATIOS:
            press = make(ratio)
            scores = capture(press)
            nlls = []
            for w in range(WINDOWS):
                nlls.append(window_nll(model, ids, w * (CONTEXT + CONTINUATION), press))
                if w == 0:
                    kept, ties = [], []
                    for layer in range(len(scores)):
                        s = scores[layer]
                        n_kept = compute_n_kept(s.shape[-1], ratio)
                        layer_kept, layer_ties = [], []
                        for head in s:
                            top = torch.topk(head, n_kept).indices.sort().values.tolist()
                            cut = head[top].min()
                            layer_kept.append(bitset(top, CONTEXT))
                            # Ambiguous only when more tokens reach the cut than are kept.
                            ambiguous = (head >= cut).sum().item() > n_kept
                            layer_ties.append((head == cut).nonzero().flatten().tolist() if ambiguous else [])
                        kept.append(layer_kept)
                        ties.append(layer_ties)
                    scores.clear()
            ppl = math.exp(sum(nlls) / (WINDOWS * CONTINUATION))
            fixture["presses"].setdefault(name, {})[str(ratio)] = {
                "perplexity": ppl,
                "nll": nlls,
                "kept": kept,
                "ties": ties,
            }
            print(f"{name}@{ratio}: {ppl:.4f} ({time.time() - started:.0f} s)", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
