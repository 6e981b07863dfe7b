"""transformers on our HF directory vs llama.cpp on the original GGUF: same next-token logits.

H0 (what would make this fail): the HF directory written by ``write_hf_dir`` from SmolLM2 Q4_1
(or Gemma 3 Q4_K_M) is not the same network as the GGUF (wrong q/k un-permutation, wrong config value such as
rope_theta / rms_norm_eps / kv heads, wrong tokenizer ids, untied lm_head). Any of those moves the
logits far beyond the noise of llama.cpp's quantized activations and breaks top-1 agreement.

The transformers model holds the dequantized weights rounded to float16 (Gemma: bfloat16) and
runs in float32; llama.cpp runs the quantized file with 8-bit quantized activations, so logits
agree closely but not exactly. The measured numbers go to ``bench/results/hf_logits.json``
(SmolLM2) and ``bench/results/hf_logits_gemma3.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from _fixtures_hf import auto_tokenizer, causal_lm, forward_logits, hf_dir_from_gguf, llama_for_logits
from _results import write_result

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(fibonacci(10))",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woman who",
    "Ünïcödé test: Les élèves étudient à l'école. 日本語も少し。 The answer is 42.",
]

TOP1_MIN_AGREEMENT = 0.99

GEMMA_CHAT = "<start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n"
CASES = {
    # model fixture, HF dtype, chat (messages for the directory's template, or literal text),
    # number of plain prompts, minimum number of positions compared
    "smollm2": ("smollm2", "float16", [{"role": "user", "content": "Name three primary colors."}], 4, 100),
    "gemma3": ("gemma3", "bfloat16", GEMMA_CHAT, 2, 40),
}


def _compare(gguf: Path, d: Path, prompts: list[str], llama_cpp_module) -> dict:
    model = causal_lm(d)
    tok = auto_tokenizer(d)
    llm = llama_for_logits(llama_cpp_module, gguf)
    add_bos = bool(llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true")
    per_prompt = []
    agree = total = 0
    max_abs = 0.0
    t0 = time.perf_counter()
    for text in prompts:
        ids = tok(text)["input_ids"]
        assert ids == list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)), text
        ours = forward_logits(model, ids)
        llm.reset()
        llm.eval(ids)
        ref = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        assert ours.shape == ref.shape == (len(ids), llm.n_vocab())
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
    return {
        "model": gguf.name,
        "positions": total,
        "top1_agreement": agree / total,
        "max_abs_logit_diff": max_abs,
        "min_mean_row_correlation": min(p["mean_row_correlation"] for p in per_prompt),
        "per_prompt": per_prompt,
        "seconds": round(time.perf_counter() - t0, 2),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_hf_logits_match_llama_cpp(case: str, request, llama_cpp_module) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    fixture, dtype, chat, n_prompts, min_positions = CASES[case]
    gguf = request.getfixturevalue(fixture)
    d = hf_dir_from_gguf(gguf, dtype)
    prompts = [p for p in PROMPTS if p is not None][:n_prompts]
    if isinstance(chat, str):
        prompts.append(chat)
    else:
        prompts.append(auto_tokenizer(d).apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    result = {"hf_dir_dtype": dtype, "transformers_compute_dtype": "float32", **_compare(gguf, d, prompts, llama_cpp_module)}
    write_result(f"hf_logits_{case}" if case != "smollm2" else "hf_logits", result)
    assert result["positions"] >= min_positions
    assert result["top1_agreement"] >= TOP1_MIN_AGREEMENT, result
    assert result["min_mean_row_correlation"] > 0.99, result
