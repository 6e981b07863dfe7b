"""Mark and trace on synthetic tensors and a tiny llama GGUF (fast; no real model).

The real-model acceptance tests are in test_mark_real.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_mark import (  # noqa: E402
    TINY_FFN,
    TINY_HEADS,
    TINY_KV,
    deterministic_issuing,
    write_test_key_file,
    write_tiny_llama,
)

from weightprint.constants import QType  # noqa: E402
from weightprint.errors import NotComparableError, RegistryError, WeightprintError  # noqa: E402
from weightprint.mark import init_registry, issue_copy, trace_leak, verify_file  # noqa: E402
from weightprint.mark import keys, scheme  # noqa: E402
from weightprint.mark.keys import CopyKey, MasterKey  # noqa: E402


# --------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------
def test_key_file_is_0600_and_roundtrips(tmp_path):
    p = tmp_path / "m.key"
    master = keys.create_key_file(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    again = keys.load_key_file(p)
    assert again.fingerprint() == master.fingerprint()
    assert "hidden" in repr(master) and p.read_text().split()[1] not in repr(master)
    with pytest.raises(RegistryError, match="already exists"):
        keys.create_key_file(p)


def test_key_file_errors(tmp_path):
    p = tmp_path / "m.key"
    keys.create_key_file(p)
    os.chmod(p, 0o644)
    with pytest.raises(RegistryError, match=r"has permissions 0644, expected 0600$"):
        keys.load_key_file(p)
    with pytest.raises(RegistryError, match=r"^key file .*nope.key not found$"):
        keys.load_key_file(tmp_path / "nope.key")
    with pytest.raises(RegistryError, match="no key file given"):
        keys.load_key_file(None)
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    os.chmod(bad, 0o600)
    with pytest.raises(RegistryError, match="not a weightprint key file"):
        keys.load_key_file(bad)


def test_derived_keys_are_deterministic_and_distinct():
    m = MasterKey(b"\x01" * 32)
    salt = b"\x02" * 16
    a = m.derive(salt, "issue-a")
    assert a._key == m.derive(salt, "issue-a")._key
    assert a._key != m.derive(salt, "issue-b")._key
    assert a._key != m.derive(b"\x03" * 16, "issue-a")._key
    assert a._key != MasterKey(b"\x04" * 32).derive(salt, "issue-a")._key
    code = m.code_key()
    assert code._key == MasterKey(b"\x01" * 32).code_key()._key != MasterKey(b"\x04" * 32).code_key()._key
    x1 = scheme.symbols(a, code, "t.weight", 100_000)
    assert np.array_equal(x1, scheme.symbols(a, code, "t.weight", 100_000))
    assert abs(x1.mean() - 0.5) < 0.01  # the arcsine biases are symmetric around 1/2
    k = scheme.bias_thresholds(code, "t.weight", 100_000)
    assert k.min() >= 1 and k.max() <= 255
    assert np.array_equal(k, scheme.bias_thresholds(MasterKey(b"\x01" * 32).code_key(), "t.weight", 100_000))
    # P(X = 1 | p) = p: symbols follow the biases; other tensors' streams are unrelated
    p = k / 256.0
    lo, hi = p < 0.2, p > 0.8
    assert x1[lo].mean() < 0.15 and x1[hi].mean() > 0.85
    x2 = scheme.symbols(a, code, "u.weight", 100_000)
    assert abs(np.corrcoef(x1, x2)[0, 1]) < 0.02
    assert abs(float(np.mean((x1 - p) * (scheme.symbols(m.derive(salt, "issue-b"), code, "t.weight", 100_000) - p)))) < 0.01


# --------------------------------------------------------------------------------------
# scheme on synthetic tensors, with our own quantizer
# --------------------------------------------------------------------------------------
def _roundtrip(values: np.ndarray, qtype: QType) -> np.ndarray:
    from weightprint.quant import dequantize, quantize

    return dequantize(quantize(values, qtype), qtype, values.shape).reshape(values.shape)


def _issue_tensor(marked, qtype: QType) -> np.ndarray:
    """What a copy stores for one tensor, dequantized: the quantizer applies the key's rounding."""
    from weightprint.quant import KeyedRounding, dequantize, quantize

    assert isinstance(marked, KeyedRounding)
    q = quantize(marked.values, qtype, rounding=marked.rounding, delta=marked.delta)
    return dequantize(q, qtype, marked.values.shape).reshape(marked.values.shape)


FIXED_SCALE = (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0)


@pytest.mark.parametrize("qtype", [*FIXED_SCALE, QType.Q2_K, QType.Q3_K, QType.Q4_K, QType.Q5_K, QType.Q6_K])
def test_embed_moves_boundary_weights_one_level_and_is_detected(qtype):
    """The copy differs from llama.cpp's quantization only at candidates, by one level, in the key's
    direction; the right key scores every candidate +1 (T = n, z = sqrt(n)); a wrong key's |z| is small."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((256, 1024)) * 0.02).astype(np.float32)
    key, other, code = CopyKey.random(), CopyKey.random(), CopyKey.random()
    delta = scheme.DEFAULT_DELTA
    y = _issue_tensor(scheme.embed_tensor("blk.weight", x, qtype, key, code, delta=delta), qtype)
    plain = _roundtrip(x, qtype)
    up, dn = scheme.level_pair(x, qtype, delta)
    cand = up != dn
    changed = y != plain
    assert not (changed & ~cand).any()  # scales, minimums and all other weights are llama.cpp's
    assert np.array_equal(y[cand], np.where(scheme.symbols(key, code, "blk.weight", x.size).reshape(x.shape),
                                            up, dn)[cand])
    assert ((plain == up) | (plain == dn)).all()
    frac = float(changed.mean())
    if qtype in FIXED_SCALE:  # a band of width 2 delta around each boundary; half of it flips
        assert 0.6 * delta < frac < 1.4 * delta, frac
    else:  # k-quants: clipped extremes and zero sub-block scales take no mark
        assert 0.15 * delta < frac < 1.4 * delta, frac
    idx, c = scheme.candidate_scores(x, y, qtype, delta)
    n = idx.size
    assert n == int(cand.sum()) > 0 and np.array_equal(np.abs(c), np.ones(n))

    def z(scores_idx, scores, k):
        table = scheme.code_table("blk.weight", x.size, scores_idx, scores, code)
        return scheme.tardos_score(table, scheme.key_stream(k, "blk.weight", x.size)) / math.sqrt(table.sum_sq)

    # the right key: E[c h] = 2 sqrt(p (1 - p)) per candidate, 2/pi on average over the arcsine law
    assert 0.5 * math.sqrt(n) < z(idx, c, key) < 0.8 * math.sqrt(n)
    assert abs(z(idx, c, other)) < 5
    # the unmarked quantization is no evidence for either key
    idx0, c0 = scheme.candidate_scores(x, plain, qtype, delta)
    assert abs(z(idx0, c0, key)) < 5


def test_embed_leaves_rounding_ties_to_llama_cpp():
    """Weights exactly on a rounding tie keep llama.cpp's rounding, whatever the key; weights just off
    a boundary follow the key."""
    from weightprint.quant import dequantize, quantize

    x = np.zeros((64, 32), np.float32)
    x[:, 0] = 127.0  # Q8_0 step exactly 1
    x[:, 1:11] = np.arange(10) + 0.5  # ties
    x[:, 11:21] = np.arange(10) + 0.5 - 0.02  # just below a boundary
    x[:, 21:] = np.arange(11) + 0.3  # far from a boundary
    plain = _roundtrip(x, QType.Q8_0)
    for sign in (1, -1):
        dirs = np.full(x.shape, sign, np.int8)
        y = dequantize(quantize(x, QType.Q8_0, rounding=dirs, delta=0.05), QType.Q8_0, x.shape)
        assert np.array_equal(y[:, :11], plain[:, :11])
        assert np.array_equal(y[:, 21:], plain[:, 21:])
        assert np.array_equal(y[:, 11:21], np.floor(x[:, 11:21]) + (sign > 0))


def test_float_targets_put_every_weight_on_the_q8_0_grid():
    """A float copy is the keyed Q8_0 quantization of the whole tensor, dequantized: the candidates
    take the key's level and every other weight llama.cpp's Q8_0 level, so all weights sit on the grid."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((128, 512)) * 0.02).astype(np.float32)
    key, code = CopyKey.random(), CopyKey.random()
    delta = 0.01
    name = "model.layers.3.mlp.up_proj.weight"
    got = scheme.embed_tensor(name, x, QType.F16, key, code, delta=delta)
    up, dn = scheme.level_pair(x, QType.Q8_0, delta)
    cand = up != dn
    assert 0.01 < cand.mean() < 0.03
    plain = _roundtrip(x, QType.Q8_0)
    assert np.array_equal(got[~cand], plain[~cand])
    sym = scheme.symbols(key, code, name, x.size).reshape(x.shape)
    assert np.array_equal(got[cand], np.where(sym, up, dn)[cand])
    assert np.array_equal(_roundtrip(got, QType.Q8_0), got)  # on the grid, every one
    idx, c = scheme.candidate_scores(x, got.astype(np.float16).astype(np.float32), QType.Q8_0, delta)
    table = scheme.code_table(name, x.size, idx, c, code)
    t = scheme.tardos_score(table, scheme.key_stream(key, name, x.size))
    assert t / math.sqrt(table.sum_sq) > 0.5 * math.sqrt(idx.size)


def test_embed_leaves_vectors_norms_and_gridless_tensors_alone():
    key, code = CopyKey.random(), CopyKey.random()
    v = np.ones(4096, np.float32)
    assert scheme.embed_tensor("model.norm.weight", v, QType.F32, key, code) is v
    m = np.ones((64, 256), np.float32)
    assert scheme.embed_tensor("model.layers.0.input_layernorm.weight", m, QType.Q4_K, key, code) is m
    odd = np.ones((64, 100), np.float32)  # rows of 100 are no whole Q8_0 blocks
    assert scheme.embed_tensor("model.layers.0.mlp.up_proj.weight", odd, QType.F16, key, code) is odd
    assert scheme.grid_type(QType.IQ2_XS, 256) is None


def test_pvalue_bound_is_valid_and_nearly_uniform_under_h0():
    """H0: symbols drawn with the code's biases, independent of the scores. The bound must dominate
    the empirical tail, and the p-values of fresh draws be ~ uniform."""
    rng = np.random.default_rng(7)
    n = 50_000
    idx = np.arange(n)
    c = np.clip(rng.standard_t(3, size=n), -1, 1)
    code = CopyKey.random()
    table = scheme.code_table("t.weight", n, idx, c, code)
    p = table.thresholds / 256.0
    zs, lps = [], []
    for _ in range(2000):
        stream = rng.integers(0, 256, size=n, dtype=np.uint8)
        t = scheme.tardos_score(table, stream)
        zs.append(t / math.sqrt(table.sum_sq))
        lps.append(scheme.log10_pvalue(t, table.sum_sq, table.sum_cube, table.bound, table.range_sq))
    zs, ps = np.array(zs), 10 ** np.array(lps)
    assert abs(zs.mean()) < 0.1 and abs(zs.std() - 1) < 0.1  # zero mean, variance sum c^2
    for z in (1.0, 2.0, 3.0):
        emp = float(np.mean(zs >= z))
        bound = 10 ** scheme.log10_pvalue(z * math.sqrt(table.sum_sq), table.sum_sq, table.sum_cube, table.bound,
                                         table.range_sq)
        assert emp <= bound + 3 * math.sqrt(bound / 2000) + 1e-3, (z, emp, bound)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert ps.min() > 1e-6
    # the far tail: Bernstein's exp(-t^2 / (2 (V + b t / 3)))
    t = 40 * math.sqrt(table.sum_sq)
    bern = -t * t / (2 * (table.sum_sq + table.bound * t / 3)) / math.log(10)
    assert scheme.log10_pvalue(t, table.sum_sq, table.sum_cube, table.bound, table.range_sq) <= bern + 1e-9
    assert table.bound <= math.sqrt(255) + 1e-9 and p.min() >= 1 / 256


def test_candidate_scores_degenerate_inputs():
    x = np.zeros((8, 1024), np.float32)
    idx, c = scheme.candidate_scores(x, x, QType.Q4_K, 0.01)
    assert idx.size == 0 and c.size == 0
    x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    y = x.copy()
    y[0, :] = np.nan
    y[1] += 10.0
    idx, c = scheme.candidate_scores(x, y, QType.Q5_0, 0.05)
    assert idx.size > 0 and np.isfinite(c).all() and np.abs(c).max() <= 1.0
    assert not c[idx < 1024].any()  # non-finite leak values score 0


# --------------------------------------------------------------------------------------
# tiny llama end to end: registry, issue, trace, attacks, errors
# --------------------------------------------------------------------------------------
RECIPIENTS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A registry with three Q4_K_M copies of a tiny llama GGUF."""
    d = tmp_path_factory.mktemp("mark")
    source = write_tiny_llama(d / "tiny-f16.gguf")
    url = f"sqlite:///{d / 'reg.db'}"
    key_file = write_test_key_file(d / "master.key", "tiny")
    info = init_registry(url, key_file)
    copies = {}
    with deterministic_issuing("tiny"):
        for r in RECIPIENTS:
            res = issue_copy(source, r, "Q4_K_M", d / f"{r}.gguf", registry_url=url, key_file=key_file)
            copies[r] = res
    return {"dir": d, "source": source, "url": url, "key_file": key_file, "info": info, "copies": copies}


def _trace(tiny, leaked, **kw):
    return trace_leak(leaked, source=tiny["source"], registry_url=tiny["url"], key_file=tiny["key_file"], **kw)


def _assert_accuses(verdict, who: str, *, innocent_level: float = 1e-3):
    assert verdict.accused_recipient == who, verdict.summary()
    for t in verdict.tests:
        if t.recipient != who:
            assert t.result.pvalue > innocent_level, (t.recipient, t.result.pvalue)
    assert verdict.false_accusation_bound < 1e-9


def test_issue_result_and_registry(tiny):
    res = tiny["copies"]["alice"]
    assert res.n_marked_tensors == 15  # embed + 7 matrices x 2 layers
    assert Path(res.output).is_file()
    d = res.to_dict()
    json.dumps(d)
    assert tiny["info"].created_registry and not tiny["info"].created_key  # seeded test key file
    again = init_registry(tiny["url"], tiny["key_file"])
    assert not again.created_registry and again.registry_id == tiny["info"].registry_id


@pytest.mark.parametrize("who", RECIPIENTS)
def test_trace_accuses_the_right_copy(tiny, who):
    v = _trace(tiny, tiny["copies"][who].output)
    _assert_accuses(v, who)
    assert v.n_copies == 3
    json.dumps(v.to_dict())


def test_trace_unmarked_copy_accuses_nobody(tiny):
    from weightprint.convert import convert

    plain = tiny["dir"] / "plain-q4km.gguf"
    if not plain.exists():
        convert(tiny["source"], plain, file_type="Q4_K_M")
    v = _trace(tiny, plain)
    assert v.accused == [] and "no registered recipient" in v.summary()
    assert all(t.result.pvalue > 1e-3 for t in v.tests)


@pytest.mark.parametrize("fmt", ["Q8_0", "Q5_K_M", "Q3_K_M", "hf-f16", "hf-bf16"])
def test_trace_survives_requantization_and_dequantization(tiny, fmt):
    from weightprint.convert import convert

    src = tiny["copies"]["bob"].output
    out = tiny["dir"] / f"bob-{fmt}"
    if fmt.startswith("hf"):
        convert(src, out, to="hf", dtype="float16" if fmt == "hf-f16" else "bfloat16")
    else:
        out = out.with_suffix(".gguf")
        convert(src, out, file_type=fmt)
    _assert_accuses(_trace(tiny, out), "bob")


def _permute_transform(seed: int):
    """A function-preserving permutation of MLP units and of attention heads (GQA groups kept)."""
    rng = np.random.default_rng(seed)
    hd = 256 // TINY_HEADS
    group = TINY_HEADS // TINY_KV
    mlp = {i: rng.permutation(TINY_FFN) for i in range(2)}
    kv = {i: rng.permutation(TINY_KV) for i in range(2)}
    q = {}
    for i in range(2):  # q head h' = group of kv[i][h//group], member permuted within the group
        within = [rng.permutation(group) for _ in range(TINY_KV)]
        q[i] = np.array([kv[i][h // group] * group + within[h // group][h % group] for h in range(TINY_HEADS)])

    def rows(perm, block):
        return (perm[:, None] * block + np.arange(block)[None, :]).reshape(-1)

    def transform(name, values, qtype):
        if ".layers." not in name:
            return values
        i = int(name.split(".layers.")[1].split(".")[0])
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            return values[mlp[i]]
        if name.endswith("down_proj.weight"):
            return values[:, mlp[i]]
        if name.endswith("q_proj.weight"):
            return values[rows(q[i], hd)]
        if name.endswith("o_proj.weight"):
            return values[:, rows(q[i], hd)]
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            return values[rows(kv[i], hd)]
        return values

    return transform


def test_trace_undoes_permutations(tiny):
    from weightprint.convert import convert

    out = tiny["dir"] / "carol-permuted-q8.gguf"
    convert(tiny["copies"]["carol"].output, out, file_type="Q8_0", tensor_transform=_permute_transform(3))
    v = _trace(tiny, out)
    _assert_accuses(v, "carol")
    assert v.alignment["mlp_permuted_layers"] == [0, 1]
    assert v.alignment["head_permuted_layers"] == [0, 1]
    # without alignment the mark of the permuted tensors is lost (H0 holds for them)
    v2 = _trace(tiny, out, undo_permutations=False)
    assert v2.tests[2].result.statistic < v.tests[2].result.statistic / 2


def test_trace_collusion_average(tiny):
    from weightprint.convert import convert
    from weightprint.io import open_model

    with open_model(tiny["copies"]["bob"].output) as b:
        def average(name, values, qtype):
            return (values + b.tensor(name)) / 2

        out = tiny["dir"] / "alice-bob-avg.gguf"
        convert(tiny["copies"]["alice"].output, out, file_type="F16", tensor_transform=average)
    v = _trace(tiny, out)
    assert set(v.to_dict()["accused"]) <= {"alice", "bob"} and v.accused
    carol = next(t for t in v.tests if t.recipient == "carol")
    assert carol.result.pvalue > 1e-3


def test_trace_against_another_registry_accuses_nobody(tiny, tmp_path):
    """A copy issued by another registry (unknown recipient) must not be attributed here."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    kf = tmp_path / "other.key"
    init_registry(url, kf)
    other = issue_copy(tiny["source"], "mallory", "Q4_K_M", tmp_path / "m.gguf", registry_url=url, key_file=kf)
    v = _trace(tiny, other.output)
    assert v.accused == []
    # and the copy's own registry finds it
    v2 = trace_leak(other.output, source=tiny["source"], registry_url=url, key_file=kf)
    assert v2.accused_recipient == "mallory"


def test_secrets_never_leave_the_key_file(tiny):
    secret_hex = Path(tiny["key_file"]).read_text().split()[1]
    master = keys.load_key_file(tiny["key_file"])
    from weightprint.mark.registry import open_registry

    with open_registry(tiny["url"]) as reg:
        recs = reg.copies()
    derived = [master.derive(bytes.fromhex(r.key_salt), r.issue_id)._key.hex() for r in recs]
    v = _trace(tiny, tiny["copies"]["alice"].output)
    blobs = [json.dumps(v.to_dict()), json.dumps(tiny["info"].to_dict()), repr(v), repr(recs),
             json.dumps(tiny["copies"]["alice"].to_dict())]
    db_bytes = b"".join(p.read_bytes() for p in Path(tiny["dir"]).glob("reg.db*"))
    for s in [secret_hex, *derived]:
        for b in blobs:
            assert s not in b
        assert s.encode() not in db_bytes and bytes.fromhex(s) not in db_bytes


def test_errors_are_one_line_and_clear(tiny, tmp_path):
    with pytest.raises(RegistryError, match="no key file given"):
        trace_leak(tiny["copies"]["alice"].output, source=tiny["source"], registry_url=tiny["url"], key_file=None)
    other_key = tmp_path / "x.key"
    keys.create_key_file(other_key)
    with pytest.raises(RegistryError, match=r"key file does not belong to registry .* \(fingerprint mismatch\)$"):
        _trace(tiny, tiny["copies"]["alice"].output, key_file=other_key) if False else trace_leak(
            tiny["copies"]["alice"].output, source=tiny["source"], registry_url=tiny["url"], key_file=other_key)
    other_src = write_tiny_llama(tmp_path / "other-src.gguf", seed=5)
    with pytest.raises(RegistryError, match=r"has no copy issued from source .*other-src.gguf \(sha256 [0-9a-f]{12}; 3 copies of other sources\)"):
        trace_leak(tiny["copies"]["alice"].output, source=other_src, registry_url=tiny["url"], key_file=tiny["key_file"])
    with pytest.raises(RegistryError, match=r"recipient `alice` already holds a Q4_K_M copy of source [0-9a-f]{12}"):
        issue_copy(tiny["source"], "alice", "Q4_K_M", tmp_path / "dup.gguf", registry_url=tiny["url"], key_file=tiny["key_file"])
    assert not (tmp_path / "dup.gguf").exists()
    with pytest.raises(WeightprintError, match="already exists"):
        issue_copy(tiny["source"], "zed", "Q4_K_M", tiny["copies"]["alice"].output, registry_url=tiny["url"], key_file=tiny["key_file"])
    with pytest.raises(WeightprintError, match="recipient name is empty"):
        issue_copy(tiny["source"], "  ", "Q4_K_M", tmp_path / "e.gguf", registry_url=tiny["url"], key_file=tiny["key_file"])
    with pytest.raises(RegistryError, match="is not initialised"):
        trace_leak(tiny["copies"]["alice"].output, source=tiny["source"], registry_url=f"sqlite:///{tmp_path / 'none.db'}",
                   key_file=tiny["key_file"])
    for e in [RegistryError("x")]:
        assert "\n" not in str(e)


def test_leak_of_another_architecture_is_not_comparable(tiny, tmp_path):
    import gguf

    path = tmp_path / "other-arch.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.embedding_length", 64)
    w.add_uint32("llama.attention.head_count", 2)
    w.add_uint32("llama.context_length", 64)
    w.add_uint32("llama.feed_forward_length", 128)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("token_embd.weight", np.ones((100, 64), np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.ones((128, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(NotComparableError, match=r"shares no weight matrix with source .* \(2 of the same name with another shape\)$"):
        _trace(tiny, path)


def test_verify_exact_then_watermark(tiny):
    from weightprint.convert import convert

    r = verify_file(tiny["copies"]["carol"].output, registry_url=tiny["url"], key_file=tiny["key_file"])
    assert r.match == "exact" and r.record.recipient == "carol" and r.evidence_found
    out = tiny["dir"] / "carol-q8-verify.gguf"
    if not out.exists():
        convert(tiny["copies"]["carol"].output, out, file_type="Q8_0")
    r = verify_file(out, registry_url=tiny["url"], key_file=tiny["key_file"])
    assert r.match == "watermark" and r.trace.accused_recipient == "carol" and r.verdict == "watermark"
    json.dumps(r.to_dict())


def test_calibration_random_keys_on_unmarked_copy(tiny):
    """H0 holds for fresh (unseeded) never-issued keys: p-values uniform, none below 1e-6.

    Fresh draws each run, so the test checks the distribution rather than one fixed draw; a KS
    p-value below 1e-3 fails it (0.1% of runs by chance). bench/bench_mark_calibration.py runs 10,000.
    """
    from weightprint.io import open_model
    from weightprint.mark.trace import CopyTest, correlate_leak

    copies = [CopyTest(f"k{i}", f"k{i}", "Q4_K_M", CopyKey.random()) for i in range(400)]
    with open_model(tiny["source"]) as o, open_model(_plain(tiny)) as leak:
        st = correlate_leak(o, leak, copies, code_key=_tiny_code_key(tiny))
    ps = np.array([t.pvalue for t in st.tests])
    assert _super_uniform(ps)
    assert ps.min() > 1e-6
    # also against the marked copy of another recipient: the copies' keys are independent of each other
    with open_model(tiny["source"]) as o, open_model(tiny["copies"]["alice"].output) as leak:
        st = correlate_leak(o, leak, copies[:200], code_key=_tiny_code_key(tiny))
    ps = np.array([t.pvalue for t in st.tests])
    assert _super_uniform(ps) and ps.min() > 1e-6


def test_trace_undoes_layer_reordering_under_canonical_names(tiny):
    """Layers 0 and 1 swapped (names kept): pairs are re-matched by fingerprint."""
    from weightprint.convert import convert
    from weightprint.io import open_model

    src = tiny["copies"]["alice"].output
    out = tiny["dir"] / "alice-swapped-layers.gguf"
    with open_model(src) as m:
        def swap(name, values, qtype):
            if ".layers.0." in name:
                return m.tensor(name.replace(".layers.0.", ".layers.1."))
            if ".layers.1." in name:
                return m.tensor(name.replace(".layers.1.", ".layers.0."))
            return values

        convert(src, out, file_type="Q8_0", tensor_transform=swap)
    v = _trace(tiny, out)
    _assert_accuses(v, "alice")
    assert len(v.alignment["renamed"]) == 14 and v.alignment["n_tensors"] == 15


def test_trace_undoes_renamed_tensors(tiny):
    """A safetensors leak with foreign tensor names (another prefix) is matched by fingerprint."""
    from safetensors.numpy import load_file, save_file

    from weightprint.convert import convert

    hf = tiny["dir"] / "bob-hf-renamed"
    convert(tiny["copies"]["bob"].output, hf, to="hf", dtype="float32")
    st = next(hf.glob("*.safetensors"))
    tensors = load_file(str(st))
    save_file({k.replace("model.layers.", "transformer.blocks."): v for k, v in tensors.items()}, str(st))
    v = _trace(tiny, st)
    _assert_accuses(v, "bob")
    assert len(v.alignment["renamed"]) == 14


def test_trace_of_the_original_itself_accuses_nobody(tiny):
    """The leak is the unmarked original: it sits inside every candidate's band (|c| < 2 delta), on
    the side the original's own value puts it, independent of any key."""
    v = _trace(tiny, tiny["source"])
    assert v.accused == [] and min(t.result.pvalue for t in v.tests) > 1e-3
    assert all(abs(t.result.statistic) < 5 for t in v.tests)


# --------------------------------------------------------------------------------------
# changes of residual basis (issue 10): traced in the original's basis
# --------------------------------------------------------------------------------------
def _basis_leak(tiny, who: str, kind: str, ftype: str = "Q5_K_M") -> Path:
    """``who``'s copy under a residual transform (sign flip, permutation, rotation with folded
    norms and untied head), requantized to ``ftype`` by weightprint."""
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.testing.symmetry import residual_transform

    src = tiny["copies"][who].output if who != "plain" else _plain(tiny)
    out = tiny["dir"] / f"{who}-{kind}-{ftype}.gguf"
    if not out.exists():
        with open_model(src) as m:
            convert(residual_transform(m, kind, seed=3), out, file_type=ftype)
    return out


def _plain(tiny) -> Path:
    from weightprint.convert import convert

    plain = tiny["dir"] / "plain-q4km.gguf"
    if not plain.exists():
        convert(tiny["source"], plain, file_type="Q4_K_M")
    return plain


@pytest.mark.parametrize("kind, expected", [("sign_flip", "sign flip"), ("permute", "permutation"),
                                            ("rotate", "orthogonal")])
def test_trace_in_the_original_basis(tiny, kind, expected):
    leak = _basis_leak(tiny, "alice", kind)
    v = _trace(tiny, leak)
    _assert_accuses(v, "alice")
    assert v.alignment["basis"]["kind"] == expected
    # without the recovery the evidence is gone (z near 0 or negative)
    v0 = _trace(tiny, leak, recover_basis=False)
    assert v0.accused == []


def test_basis_recovery_keeps_the_false_accusation_bound(tiny):
    """H0 with the recovery in the loop: fresh (unseeded) keys on rotated / permuted leaks of the
    unmarked copy and of another recipient's copy give uniform p-values (KS), none below 1e-6.

    The map is fitted from the original and the leak only, so it cannot depend on a key; this
    checks it on fresh draws (a KS p-value below 1e-3 fails the test: 0.1% of runs by chance).
    """
    from weightprint.io import open_model
    from weightprint.mark.trace import CopyTest, correlate_leak

    keys = [CopyTest(f"k{i}", f"k{i}", "Q4_K_M", CopyKey.random()) for i in range(200)]
    for who, kind in (("plain", "rotate"), ("bob", "permute"), ("bob", "rotate")):
        with open_model(tiny["source"]) as o, open_model(_basis_leak(tiny, who, kind)) as leak:
            st = correlate_leak(o, leak, keys, code_key=_tiny_code_key(tiny))
        ps = np.array([t.pvalue for t in st.tests])
        assert _super_uniform(ps), (who, kind)
        assert ps.min() > 1e-6, (who, kind)


def _tiny_code_key(tiny) -> CopyKey:
    """The registry's code key: innocent keys are tested against the biases the copies were issued with."""
    return keys.load_key_file(tiny["key_file"]).code_key()


def test_copies_of_an_older_scheme_are_refused_in_one_line(tiny, tmp_path):
    """A registry holding wp-round-v2 copies (fair signs) cannot be traced with the v3 code: a clear error."""
    import shutil
    import sqlite3

    from weightprint.mark import SCHEME_VERSION

    assert SCHEME_VERSION == "wp-round-v3"
    db = tmp_path / "old.db"
    shutil.copy(tiny["dir"] / "reg.db", db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE wp_copies SET scheme_version = 'wp-round-v2'")
    with pytest.raises(RegistryError) as e:
        trace_leak(tiny["copies"]["alice"].output, source=tiny["source"], registry_url=f"sqlite:///{db}",
                   key_file=tiny["key_file"])
    msg = str(e.value)
    assert "\n" not in msg and "wp-round-v2" in msg and "wp-round-v3" in msg


@pytest.mark.parametrize("strategy", ["agree-keep/midpoint", "average", "majority", "random-pick"])
def test_collusion_of_three_accuses_all_three(tiny, strategy):
    """All three recipients collude (tiny model: ~4k candidates); each is accused, and 100 fresh
    never-issued keys (the innocents) are not."""
    from _fixtures_mark import collusion_model

    from weightprint.io import open_model
    from weightprint.mark.trace import CopyTest, correlate_leak

    master = keys.load_key_file(tiny["key_file"])
    from weightprint.mark.registry import open_registry

    with open_registry(tiny["url"]) as reg:
        records = [r for r in reg.copies() if r.recipient in RECIPIENTS]
    guilty = [CopyTest(r.issue_id, r.recipient, r.file_type, master.derive(bytes.fromhex(r.key_salt), r.issue_id))
              for r in records]
    innocent = [CopyTest(f"k{i}", f"innocent-{i}", "Q4_K_M", CopyKey.random()) for i in range(100)]
    models = [open_model(tiny["copies"][r].output) for r in RECIPIENTS]
    try:
        with open_model(tiny["source"]) as o:
            st = correlate_leak(o, collusion_model(models, strategy), guilty + innocent, code_key=master.code_key())
    finally:
        for m in models:
            m.close()
    corrected = {t.evidence["recipient"]: t.evidence["log10_pvalue_bonferroni"] for t in st.tests}
    for r in RECIPIENTS:
        assert corrected[r] < -9, (strategy, r, corrected[r])
    assert min(v for k, v in corrected.items() if k.startswith("innocent")) > -3


def test_float_copy_hides_its_candidates(tiny, tmp_path):
    """The stripping attack on an F16 copy: flag the weights on the Q8_0 grid. v3 puts every weight of
    a marked tensor on it, so the flag cannot tell candidates (AUROC 0.5, target <= 0.55); the copy
    and its Q8_0 requantization still trace to the recipient."""
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.quant import dequantize, quantize

    url = f"sqlite:///{tmp_path / 'float.db'}"
    init_registry(url, tiny["key_file"])
    out = tmp_path / "dora-f16.gguf"
    issue_copy(tiny["source"], "dora", "F16", out, registry_url=url, key_file=tiny["key_file"])
    flags, labels = [], []
    with open_model(tiny["source"]) as o, open_model(out) as c:
        for t in o.tensor_infos():
            if not scheme.is_marked_tensor(t.name, tuple(t.shape)):
                continue
            x, y = o.tensor(t.name), c.tensor(t.name)
            up, dn = scheme.level_pair(x, QType.Q8_0, scheme.DEFAULT_DELTA)
            labels.append((up != dn).reshape(-1))
            flags.append((dequantize(quantize(y, QType.Q8_0), QType.Q8_0, shape=y.shape) == y).reshape(-1))
    lab, flag = np.concatenate(labels), np.concatenate(flags).astype(float)
    assert 0 < lab.sum() < lab.size
    ranks = stats.rankdata(flag)
    pos, neg = int(lab.sum()), int((~lab).sum())
    auroc = (ranks[lab].sum() - pos * (pos + 1) / 2) / (pos * neg)
    assert abs(auroc - 0.5) <= 0.05, auroc
    trace = lambda p: trace_leak(p, source=tiny["source"], registry_url=url, key_file=tiny["key_file"])  # noqa: E731
    v = trace(out)
    assert v.accused_recipient == "dora" and v.false_accusation_bound < 1e-9
    q8 = tmp_path / "dora-q8.gguf"
    convert(out, q8, file_type="Q8_0")
    assert trace(q8).accused_recipient == "dora"


def _super_uniform(ps: np.ndarray) -> bool:
    """Fresh innocent keys' p-values are valid: no excess of small values over the uniform law
    (one-sided KS, ``alternative="greater"``: the empirical CDF above the uniform's; fails 0.1% of
    runs by chance), and not degenerate (the median stays near 1/2: the Berry-Esseen term makes
    them slightly conservative, never much)."""
    return bool(stats.kstest(ps, "uniform", alternative="greater").pvalue > 1e-3 and 0.35 < np.median(ps) < 0.7)
