"""transformers on our HF directory vs llama.cpp on the original GGUF: same next-token logits.

H0 (what would make this fail): the HF directory written by ``write_hf_dir`` from SmolLM2 Q4_1
is not the same network as the GGUF (wrong q/k un-permutation, wrong config value such as
rope_theta / rms_norm_eps / kv heads, wrong tokenizer ids, untied lm_head). Any of those moves the
logits far beyond the noise of llama.cpp's quantized activations and breaks top-1 agreement.

The transformers model holds the dequantized Q4_1 weights rounded to float16 and runs in float32;
llama.cpp runs the Q4_1 file with 8-bit quantized activations, so logits agree closely but
not exactly. The measured numbers go to ``bench/results/hf_logits.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from _fixtures_hf import hf_dir_from_gguf, write_result

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(fibonacci(10))",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woman who",
    "Ünïcödé test: Les élèves étudient à l'école. 日本語も少し。 The answer is 42.",
    None,  # the chat template, rendered by transformers
]

TOP1_MIN_AGREEMENT = 0.99


@pytest.mark.slow
def test_smollm2_hf_logits_match_llama_cpp(smollm2: Path, llama_cpp_module) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = hf_dir_from_gguf(smollm2, "float16")
    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    llm = llama_cpp_module.Llama(str(smollm2), logits_all=True, n_ctx=256, n_threads=2, verbose=False)

    prompts = list(PROMPTS)
    prompts[-1] = tok.apply_chat_template(
        [{"role": "user", "content": "Name three primary colors."}], tokenize=False, add_generation_prompt=True
    )
    per_prompt = []
    agree = total = 0
    max_abs = 0.0
    t0 = time.perf_counter()
    for text in prompts:
        ids = tok(text)["input_ids"]
        assert ids == list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)), text
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)
        llm.reset()
        llm.eval(ids)
        ref = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        assert ours.shape == ref.shape == (len(ids), 49152)
        same = ours.argmax(-1) == ref.argmax(-1)
        diff = np.abs(ours - ref)
        corr = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref)]))
        agree += int(same.sum())
        total += len(ids)
        max_abs = max(max_abs, float(diff.max()))
        per_prompt.append(
            {
                "n_tokens": len(ids),
                "top1_agreement": float(same.mean()),
                "max_abs_logit_diff": float(diff.max()),
                "mean_abs_logit_diff": float(diff.mean()),
                "mean_row_correlation": corr,
                "logit_range": [float(ref.min()), float(ref.max())],
            }
        )
    result = {
        "model": smollm2.name,
        "hf_dir_dtype": "float16",
        "transformers_compute_dtype": "float32",
        "positions": total,
        "top1_agreement": agree / total,
        "max_abs_logit_diff": max_abs,
        "min_mean_row_correlation": min(p["mean_row_correlation"] for p in per_prompt),
        "per_prompt": per_prompt,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_result("hf_logits", result)
    assert total >= 100
    assert agree / total >= TOP1_MIN_AGREEMENT, result
    assert result["min_mean_row_correlation"] > 0.99, result
