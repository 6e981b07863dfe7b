"""The same-tokenizer unrelated model of the black-box nulls: Gemma 3 under SmolLM2's vocabulary.

``weightprint.testing.transplant`` gives a real, independently trained model SmolLM2's token ids.
Checked here: it is still Gemma 3 (identical greedy English, every other tensor byte for byte),
it speaks SmolLM2's vocabulary, and -- on real models, through the same code as ``compare`` --
the context-specific top-k test does not call it related to SmolLM2 while it does call
SmolLM2's requantization related (a slice of ``bench/bench_compare.py topk``: 24 English and 56
code probes).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def transplanted(smollm2, gemma3, llama_cpp_module):
    from weightprint.testing.derive import derived

    return derived("transplant", gemma3, tokenizer_source=smollm2)


def test_byte_level_decoder_inverts_gpt2_bytes():
    from weightprint.testing.transplant import byte_level_decoder, token_bytes

    dec = byte_level_decoder()
    assert len(dec) == 256 and sorted(dec.values()) == list(range(256))
    assert token_bytes(["Ġthe", "Ċ", "Ã©"], "gpt2") == [b" the", b"\n", "é".encode()]
    assert token_bytes(["\u2581the", "<0x0A>"], "llama") == [b" the", b"\n"]


def test_transplant_is_gemma_with_smollm2_token_ids(transplanted, smollm2, gemma3):
    from llama_cpp import Llama

    from weightprint.io.gguf_file import GGUFModel
    from weightprint.testing.hfdir import read_derive_info

    info = read_derive_info(transplanted.parent)["result"]
    assert info["vocab"] == 49152 and info["one_to_one"] > 0.9
    with GGUFModel(transplanted) as t, GGUFModel(gemma3) as g, GGUFModel(smollm2) as s:
        assert list(t.metadata["tokenizer.ggml.tokens"]) == list(s.metadata["tokenizer.ggml.tokens"])
        assert list(t.metadata["tokenizer.ggml.merges"]) == list(s.metadata["tokenizer.ggml.merges"])
        assert t.metadata["general.architecture"] == "gemma3"
        for info_t in t.tensor_infos():
            if info_t.name != "model.embed_tokens.weight":
                assert np.array_equal(np.asarray(t.raw(info_t.name)), np.asarray(g.raw(info_t.name))), info_t.name
        # a token both vocabularies have keeps Gemma 3's row (Q8_0 requantization of the same values)
        the_s = list(s.metadata["tokenizer.ggml.tokens"]).index("Ġthe")
        the_g = list(g.metadata["tokenizer.ggml.tokens"]).index("\u2581the")
        row_t = t.read_rows("model.embed_tokens.weight", np.array([the_s]))[0]
        row_g = g.read_rows("model.embed_tokens.weight", np.array([the_g]))[0]
        assert np.allclose(row_t, row_g, atol=1e-6)
    outs = []
    for path in (transplanted, gemma3):
        m = Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
        outs.append(m("Once upon a time, there was a little girl who", max_tokens=12, temperature=0.0)["choices"][0]["text"])
        m.close()
    assert outs[0] == outs[1] and len(outs[0].split()) >= 5


def test_topk_test_on_real_models_with_one_tokenizer(transplanted, smollm2):
    """SmolLM2 vs Gemma 3 under SmolLM2's tokenizer: no evidence; SmolLM2 vs its Q8_0: evidence."""
    from _fixtures_behave import requantized
    from weightprint.behave.backends import open_backend
    from weightprint.behave.compare import probe_tops, specific_topk_overlaps, topk_bound, topk_test
    from weightprint.behave.suites import load_prompts

    shipped = load_prompts("probes")
    probes = [p for p in shipped if p.lang == "en"][:24] + [p for p in shipped if p.lang == "code"][:56]
    tops = {}
    for name, path in (("smollm2", smollm2), ("transplant", transplanted), ("q8", requantized(smollm2))):
        with open_backend(path, n_threads=2, n_ctx=256) as b:
            tops[name], _ = probe_tops(b, probes, top_logprobs=5)
    langs = [p.lang for p in probes]
    unrelated = topk_test(specific_topk_overlaps(tops["smollm2"], tops["transplant"]), langs)
    for lang, g in unrelated.evidence["by_language"].items():
        assert g["mean"] < topk_bound(lang), (lang, g)
    assert unrelated.log10_pvalue == 0.0
    raw = np.mean([len(a & b) / len(a | b) for a, b in zip(tops["smollm2"], tops["transplant"])])
    assert raw > unrelated.statistic  # the generic tokens they share are left out
    related = topk_test(specific_topk_overlaps(tops["smollm2"], tops["q8"]), langs)
    assert related.statistic > 0.7 and related.log10_pvalue < -10
