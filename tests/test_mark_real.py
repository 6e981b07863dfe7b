"""Acceptance of issue #3 on the real SmolLM2-135M model (slow; cached under cache_dir()).

8 recipients' Q4_K_M copies of SmolLM2 dequantized to F16 are issued once per machine
(tests/_fixtures_mark.py); each attack is applied to one of them and cached. For every attack,
trace must accuse the right recipient at p < 1e-9 and no other recipient at p < 1e-3.
Measured numbers go to bench/results/mark_attacks.json.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_mark import SMOL_RECIPIENTS, smol_attack, smol_issued  # noqa: E402
from _results import write_result  # noqa: E402

pytestmark = pytest.mark.slow

RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def smol():
    info = smol_issued()
    yield info
    if RESULTS:
        write_result("mark_attacks", RESULTS, merge=True)


def _trace(smol, leaked, **kw):
    from weightprint.mark import trace_leak

    return trace_leak(leaked, source=smol["source"], registry_url=smol["url"], key_file=smol["key_file"], **kw)


def _record(name: str, verdict, expected: list[str], extra: dict | None = None) -> None:
    tests = {t.recipient: t for t in verdict.tests}
    innocent = [t for r, t in tests.items() if r not in expected]
    RESULTS[name] = {
        "expected": expected,
        "accused": [a.recipient for a in verdict.accused],
        "log10_p_expected": {r: round(tests[r].result.log10_pvalue, 2) for r in expected},
        "z_expected": {r: round(tests[r].result.statistic, 2) for r in expected},
        "min_p_innocent": min(t.result.pvalue for t in innocent),
        "max_z_innocent": round(max(t.result.statistic for t in innocent), 3),
        "trace_seconds": round(verdict.seconds, 2),
        "alignment": {k: v for k, v in verdict.alignment.items()
                      if k in ("mlp_permuted_layers", "head_permuted_layers", "n_tensors", "mean_tensor_cosine")},
        **(extra or {}),
    }
    write_result("mark_attacks", {name: RESULTS[name]}, merge=True)  # as we go: a stopped run keeps its numbers


def _assert_right(verdict, who: str) -> None:
    tests = {t.recipient: t for t in verdict.tests}
    assert verdict.accused_recipient == who, verdict.summary()
    assert tests[who].result.pvalue < 1e-9
    for r, t in tests.items():
        if r != who:
            assert t.result.pvalue > 1e-3, (r, t.result.pvalue)
    assert [a.recipient for a in verdict.accused] == [who]


def _copy(smol, i: int) -> str:
    return smol["copies"][SMOL_RECIPIENTS[i]]["output"]


# --------------------------------------------------------------------------------------
# 1-3: the copy, dequantized, requantized
# --------------------------------------------------------------------------------------
def test_copy_itself(smol):
    v = _trace(smol, _copy(smol, 0))
    _assert_right(v, SMOL_RECIPIENTS[0])
    _record("copy", v, [SMOL_RECIPIENTS[0]])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dequantized_safetensors(smol, dtype):
    from weightprint.convert import convert

    out = smol_attack(f"r1-hf-{dtype}", lambda p: convert(_copy(smol, 1), p, to="hf", dtype=dtype))
    v = _trace(smol, out)
    _assert_right(v, SMOL_RECIPIENTS[1])
    _record(f"dequantized-{dtype}", v, [SMOL_RECIPIENTS[1]])


@pytest.mark.parametrize("ftype", ["Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "Q3_K_M"])
def test_requantized(smol, ftype):
    from weightprint.convert import convert

    out = smol_attack(f"r2-{ftype}.gguf", lambda p: convert(_copy(smol, 2), p, file_type=ftype))
    v = _trace(smol, out)
    _assert_right(v, SMOL_RECIPIENTS[2])
    _record(f"requantized-{ftype}", v, [SMOL_RECIPIENTS[2]])


# --------------------------------------------------------------------------------------
# 4: fine-tune 200 steps (AdamW, lr 1e-4, CPU) then Q4_K_M
# --------------------------------------------------------------------------------------
def test_finetuned_then_requantized(smol):
    pytest.importorskip("torch")
    from weightprint.convert import convert
    from weightprint.testing.derive import derived, read_derive_info

    tuned = derived("finetune", _copy(smol, 4), steps=200, lr=1e-4)
    info = read_derive_info(tuned)
    out = smol_attack("r4-finetune200-q4km.gguf", lambda p: convert(tuned, p, file_type="Q4_K_M"))
    v = _trace(smol, out)
    _assert_right(v, SMOL_RECIPIENTS[4])
    res = info.get("result", {})
    _record("finetune200-Q4_K_M", v, [SMOL_RECIPIENTS[4]], {
        "relative_l2_drift": res.get("relative_drift"), "loss_before": res.get("loss_before"),
        "loss_after": res.get("loss_after"), "finetune_seconds": res.get("seconds")})


# --------------------------------------------------------------------------------------
# 5: permutation of MLP units and heads (function-preserving), then requantized
# --------------------------------------------------------------------------------------
def test_permuted_then_requantized(smol):
    from weightprint.convert import convert
    from weightprint.testing.derive import derived

    permuted = derived("permute", _copy(smol, 6), seed=1)
    max_logit_diff = _max_logit_difference(derived("hf", _copy(smol, 6)), permuted)
    assert max_logit_diff < 1e-3, max_logit_diff
    out = smol_attack("r6-permuted-q4km.gguf", lambda p: convert(permuted, p, file_type="Q4_K_M"))
    v = _trace(smol, out)
    _assert_right(v, SMOL_RECIPIENTS[6])
    assert len(v.alignment["mlp_permuted_layers"]) == 30 and len(v.alignment["head_permuted_layers"]) == 30
    _record("permuted-Q4_K_M", v, [SMOL_RECIPIENTS[6]], {"max_abs_logit_difference": max_logit_diff})
    # without alignment the evidence collapses for the permuted tensors
    v0 = _trace(smol, out, undo_permutations=False)
    z0 = next(t for t in v0.tests if t.recipient == SMOL_RECIPIENTS[6]).result.statistic
    RESULTS["permuted-Q4_K_M"]["z_without_alignment"] = round(z0, 2)


def _max_logit_difference(a: Path, b: Path) -> float:
    """Max |logit difference| of two HF directories on a short held-out text (transformers, F32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from weightprint.testing.derive import heldout_text

    tok = transformers.AutoTokenizer.from_pretrained(str(a))
    ids = torch.tensor([tok(heldout_text()[:400])["input_ids"][:48]])
    outs = []
    for path in (a, b):
        lm = transformers.AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)
        with torch.no_grad():
            outs.append(lm(ids).logits.numpy())
        del lm
    return float(np.abs(outs[0] - outs[1]).max())


# --------------------------------------------------------------------------------------
# 6: Gaussian noise at the level that raises perplexity by 5%
# --------------------------------------------------------------------------------------
def test_gaussian_noise_five_percent_perplexity(smol):
    pytest.importorskip("torch")
    from weightprint.testing.derive import calibrate_noise_for_perplexity, derived

    def calibrate(p: Path) -> None:
        cal = calibrate_noise_for_perplexity(_copy(smol, 5), 0.05, seed=0)
        p.write_text(json.dumps(cal.to_dict()))

    cal = json.loads(smol_attack("r5-noise-calibration.json", calibrate).read_text())
    noisy = derived("noise", _copy(smol, 5), sigma_rel=cal["sigma_rel"], seed=0)
    v = _trace(smol, noisy)
    _assert_right(v, SMOL_RECIPIENTS[5])
    _record("noise-ppl+5%", v, [SMOL_RECIPIENTS[5]], {
        "sigma_rel": cal["sigma_rel"], "perplexity_increase": cal["achieved_increase"]})


# --------------------------------------------------------------------------------------
# 7: 2-collusion, average of two dequantized copies
# --------------------------------------------------------------------------------------
def test_two_collusion_average(smol):
    from weightprint.convert import convert
    from weightprint.io import open_model

    a, b = _copy(smol, 3), _copy(smol, 7)

    def build(p: Path) -> None:
        with open_model(b) as mb:
            convert(a, p, to="hf", dtype="float32", tensor_transform=lambda n, v, q: (v + mb.tensor(n)) / 2)

    out = smol_attack("r3-r7-average-hf", build)
    v = _trace(smol, out)
    colluders = {SMOL_RECIPIENTS[3], SMOL_RECIPIENTS[7]}
    accused = {x.recipient for x in v.accused}
    assert accused and accused <= colluders, v.summary()
    for t in v.tests:
        if t.recipient not in colluders:
            assert t.result.pvalue > 1e-3, (t.recipient, t.result.pvalue)
    _record("2-collusion-average", v, sorted(colluders))


# --------------------------------------------------------------------------------------
# quality and calibration
# --------------------------------------------------------------------------------------
def test_calibration_unmarked_copy_and_random_keys(smol):
    """H0 for 200 fresh (unseeded) never-issued keys on the unmarked Q4_K_M copy: uniform p-values, none < 1e-6.

    The keys are tested on the first 6 decoder layers (the same code path as a full trace) with
    the registry's code key, to keep CI time; the 8 registered keys are tested on the whole
    model. Fresh keys each run: a KS p-value below 1e-3 fails (0.1% of runs by chance);
    bench/bench_mark_calibration.py runs 10,000.
    """
    from weightprint.io import open_model
    from weightprint.mark.keys import CopyKey, load_key_file
    from weightprint.mark.trace import CopyTest, correlate_leak

    v = _trace(smol, smol["plain"])
    assert v.accused == []
    assert min(t.result.pvalue for t in v.tests) > 1e-3
    keys = [CopyTest(f"random-{i}", f"random-{i}", "Q4_K_M", CopyKey.random()) for i in range(200)]
    subset = lambda name: any(f".layers.{i}." in name for i in range(6))  # noqa: E731
    code = load_key_file(smol["key_file"]).code_key()
    with open_model(smol["source"]) as o, open_model(smol["plain"]) as leak:
        st = correlate_leak(o, leak, keys, code_key=code, tensor_filter=subset)
    ps = np.array([t.pvalue for t in st.tests])
    ks = stats.kstest(ps, "uniform")
    RESULTS["calibration"] = {"n_keys": len(keys), "keys": "fresh", "n_weights_per_key": st.tests[0].n,
                              "ks_pvalue": float(ks.pvalue), "min_p": float(ps.min()),
                              "registered_min_p_on_unmarked": min(t.result.pvalue for t in v.tests)}
    assert _super_uniform(ps)
    assert ps.min() > 1e-6


def _hf_float32(path: str, root: Path) -> Path:
    """The model dequantized to a float32 Hugging Face directory under ``root`` (once)."""
    from weightprint.convert import convert

    out = root / Path(path).stem
    if not out.exists():
        convert(path, out, to="hf", dtype="float32")
    return out


class _Float32Greedy:
    """Greedy decoding in float32 (transformers on CPU): deterministic, no activation quantization.

    llama.cpp quantizes activations to 8 bits inside every quantized matrix product, so one
    weight changed by one level moves later roundings and flips ~2-3% of its greedy choices
    (measured; docs/watermark.md). Float32 inference of the dequantized weights measures what the
    weights themselves change.
    """

    def __init__(self, prompts: list[str], hf_dir: Path):
        from transformers import AutoTokenizer

        self.ids = [AutoTokenizer.from_pretrained(hf_dir)(p, return_tensors="pt").input_ids for p in prompts]

    @staticmethod
    def _load(hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    def generate(self, hf_dir: Path, n: int = 32) -> list[list[int]]:
        import torch

        model = self._load(hf_dir)
        with torch.no_grad():
            return [model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=0)[0, x.shape[1]:].tolist() for x in self.ids]

    def forced(self, hf_dir: Path, gens: list[list[int]]) -> np.ndarray:
        """Greedy choice at every generated position, given the same prefix (teacher forcing)."""
        import torch

        model = self._load(hf_dir)
        preds = []
        with torch.no_grad():
            for x, g in zip(self.ids, gens):
                seq = torch.cat([x, torch.tensor([g])], 1)
                preds.append(model(seq).logits[0, x.shape[1] - 1: seq.shape[1] - 1].argmax(-1).numpy())
        return np.concatenate(preds)


@pytest.fixture(scope="module")
def quality(smol, tmp_path_factory):
    """Perplexity (llama.cpp) and greedy agreement (float32) of marked copies vs the unmarked Q4_K_M copy.

    Greedy agreement over 20 prompts x 32 tokens, measured two ways: teacher-forced (each
    model's greedy choice after the unmarked copy's own continuation: the share of positions
    where the two models pick the same token) and free-running (position by position; one early
    difference makes the rest of that generation differ). The F16 source is measured the same
    way as a yardstick of how far quantization alone moves the choices.
    """
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    from weightprint.testing.derive import heldout_text, perplexity

    root = tmp_path_factory.mktemp("quality-hf")
    text = heldout_text()
    words = text.split()
    prompts = [" ".join(words[i * 25: i * 25 + 12]) for i in range(20)]
    ppl_plain = perplexity(smol["plain"], text, threads=1)
    plain_dir = _hf_float32(smol["plain"], root)
    g = _Float32Greedy(prompts, plain_dir)
    base = g.generate(plain_dir)
    base_forced = g.forced(plain_dir, base)
    total = sum(len(x) for x in base)

    def agreement(path: str) -> tuple[float, float]:
        d = _hf_float32(path, root)
        gen = g.generate(d)
        free = sum(int(a == b) for x, y in zip(base, gen) for a, b in zip(x, y)) / total
        forced = float(np.mean(g.forced(d, base) == base_forced))
        __import__("shutil").rmtree(d)
        return free, forced

    q = {"perplexity_unmarked": ppl_plain, "n_prompts": len(prompts), "n_tokens": total,
         "greedy_inference": "transformers float32 on CPU (dequantized weights)", "copies": {}}
    for i in (0, 1):
        path = _copy(smol, i)
        ppl = perplexity(path, text, threads=1)
        free, forced = agreement(path)
        q["copies"][SMOL_RECIPIENTS[i]] = {"perplexity": ppl, "relative_increase": ppl / ppl_plain - 1,
                                           "greedy_free_running_agreement": free,
                                           "greedy_teacher_forced_agreement": forced}
    free, forced = agreement(smol["source"])
    q["yardstick_f16_source_vs_unmarked_q4km"] = {"greedy_free_running_agreement": free,
                                                  "greedy_teacher_forced_agreement": forced}
    RESULTS["quality"] = q
    return q


def test_quality_perplexity(quality):
    """Marked Q4_K_M copies: perplexity within +0.5% of the unmarked Q4_K_M copy (held-out text),
    and greedy choices closer to the unmarked copy than the F16 original's, both ways of counting."""
    y = quality["yardstick_f16_source_vs_unmarked_q4km"]
    for q in quality["copies"].values():
        assert q["relative_increase"] <= 0.005, quality
        assert q["greedy_teacher_forced_agreement"] > y["greedy_teacher_forced_agreement"], quality
        assert q["greedy_free_running_agreement"] > y["greedy_free_running_agreement"], quality


def test_quality_greedy_agreement_95_percent(quality):
    """Issue #3: greedy choices of a marked copy agree with the unmarked copy on >= 95% of the
    20 x 32 generated positions (teacher-forced; free-running is recorded, see docs/watermark.md)."""
    for q in quality["copies"].values():
        assert q["greedy_teacher_forced_agreement"] >= 0.95, quality


def test_leak_of_another_architecture(smol):
    """Gemma 3 270M is no copy of SmolLM2: a clear error, never an accusation."""
    from weightprint.errors import NotComparableError
    from weightprint.testing.models import gemma3_path

    try:
        gemma = gemma3_path()
    except Exception as e:  # noqa: BLE001 - the model packages may be absent offline
        pytest.skip(f"Gemma 3 model unavailable: {e}")
    with pytest.raises(NotComparableError, match=r"shares no weight matrix with source .*smollm2-f16.gguf"):
        _trace(smol, gemma)


# --------------------------------------------------------------------------------------
# issue 10: changes of residual basis, then requantization by llama.cpp and by weightprint
# --------------------------------------------------------------------------------------
_BASIS_RECIPIENT = {"sign_flip": 1, "permute": 2, "rotate": 3}
_LLAMA_FTYPES = {"Q6_K": 18, "Q4_K_M": 15, "IQ4_XS": 30}


def basis_leak(smol, kind: str, requant: str) -> Path:
    """Recipient ``_BASIS_RECIPIENT[kind]``'s copy under the residual transform ``kind``, written
    as F16 by weightprint, then requantized: ``llama:<type>`` by llama.cpp's own quantizer,
    ``wp:<type>`` by weightprint's (from the transformed F32 values directly)."""
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.testing.symmetry import residual_transform

    src = _copy(smol, _BASIS_RECIPIENT[kind])
    tool, ftype = requant.split(":")

    def transformed_f16(p: Path) -> None:
        with open_model(src) as m:
            convert(residual_transform(m, kind, seed=1), p, file_type="F16")

    if tool == "wp":
        def build(p: Path) -> None:
            with open_model(src) as m:
                convert(residual_transform(m, kind, seed=1), p, file_type=ftype)
        return smol_attack(f"basis-{kind}-wp-{ftype}.gguf", build)
    from weightprint.testing.llama_ref import llama_quantize

    f16 = smol_attack(f"basis-{kind}-f16.gguf", transformed_f16)
    return smol_attack(f"basis-{kind}-llama-{ftype}.gguf",
                       lambda p: llama_quantize(f16, p, _LLAMA_FTYPES[ftype]))


@pytest.mark.parametrize("requant", ["llama:Q6_K", "llama:Q4_K_M", "wp:Q4_K_M"])
@pytest.mark.parametrize("kind", ["sign_flip", "permute", "rotate"])
def test_basis_change_then_requantized(smol, kind, requant):
    if requant.startswith("llama"):
        pytest.importorskip("llama_cpp")
    leak = basis_leak(smol, kind, requant)
    v = _trace(smol, leak)
    who = SMOL_RECIPIENTS[_BASIS_RECIPIENT[kind]]
    _assert_right(v, who)
    assert v.alignment["basis"]["kind"] == {"sign_flip": "sign flip", "permute": "permutation",
                                            "rotate": "orthogonal"}[kind]
    _record(f"basis-{kind}-{requant.replace(':', '-')}", v, [who], {"basis": v.alignment["basis"]})


def test_iq4_xs_requantization(smol):
    """IQ-type requantization by llama.cpp (IQ4_XS; rows of 576 fall back to IQ4_NL)."""
    pytest.importorskip("llama_cpp")
    from weightprint.testing.llama_ref import llama_quantize

    out = smol_attack("r2-llama-IQ4_XS.gguf", lambda p: llama_quantize(_copy(smol, 2), p, _LLAMA_FTYPES["IQ4_XS"]))
    v = _trace(smol, out)
    _assert_right(v, SMOL_RECIPIENTS[2])
    _record("requantized-llama-IQ4_XS", v, [SMOL_RECIPIENTS[2]])


def _super_uniform(ps: np.ndarray) -> bool:
    """Fresh innocent keys' p-values are valid: no excess of small values over the uniform law
    (one-sided KS, ``alternative="greater"``: the empirical CDF above the uniform's; fails 0.1% of
    runs by chance), and not degenerate (the median stays near 1/2: the Berry-Esseen term makes
    them slightly conservative, never much)."""
    return bool(stats.kstest(ps, "uniform", alternative="greater").pvalue > 1e-3 and 0.35 < np.median(ps) < 0.7)
