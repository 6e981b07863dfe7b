"""k-quants: 256-weight super-blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

Quantizers port llama.cpp's reference path (``quantize_row_q*_K_ref`` with ``make_qkx2_quants``,
``make_q3_quants``, ``make_qx_quants``; the path ``ggml_quantize_chunk`` takes without an
importance matrix) one float32 operation at a time, so the bytes are identical. Dequantizers
compute ``dequantize_row_q*_K`` in the same float32 order as llama.cpp and gguf-py.
"""

from __future__ import annotations

import numba
import numpy as np

from weightprint.constants import QType
from weightprint.quant.base import (
    F32,
    NumbaKernel,
    c_to_int8,
    keyed_level,
    nearest_int,
    write_fp16,
)

_njit = numba.njit(cache=True, nogil=True)
_helper = numba.njit(cache=True, nogil=True)

GROUP_MAX_EPS = F32(1e-15)


# ------------------------------------------------------------------------------ shared helpers


@_helper
def _make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Port of ``make_qkx2_quants``; returns ``(scale, the_min)``."""
    fn = F32(nmax)
    vmin = x[0]
    vmax = x[0]
    sum_w = weights[0]
    sum_x = F32(sum_w * x[0])
    for i in range(1, n):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
        w = weights[i]
        sum_w = F32(sum_w + w)
        sum_x = F32(sum_x + F32(w * x[i]))
    if vmin > 0:
        vmin = F32(0.0)
    if vmax == vmin:
        for i in range(n):
            L[i] = 0
        return F32(0.0), F32(-vmin)
    iscale = F32(fn / F32(vmax - vmin))
    scale = F32(F32(1.0) / iscale)
    best_error = F32(0.0)
    for i in range(n):
        l = nearest_int(F32(iscale * F32(x[i] - vmin)))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = F32(F32(F32(scale * F32(l)) + vmin) - x[i])
        diff = abs(diff) if use_mad else F32(diff * diff)
        best_error = F32(best_error + F32(weights[i] * diff))
    if nstep < 1:
        return scale, F32(-vmin)
    for step in range(nstep + 1):
        iscale = F32(F32(F32(rmin + F32(rdelta * F32(step))) + fn) / F32(vmax - vmin))
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            l = nearest_int(F32(iscale * F32(x[i] - vmin)))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = F32(l)
            sum_l = F32(sum_l + F32(w * fl))
            sum_l2 = F32(sum_l2 + F32(F32(w * fl) * fl))
            sum_xl = F32(sum_xl + F32(F32(w * fl) * x[i]))
        D = F32(F32(sum_w * sum_l2) - F32(sum_l * sum_l))
        if D > 0:
            this_scale = F32(F32(F32(sum_w * sum_xl) - F32(sum_x * sum_l)) / D)
            this_min = F32(F32(F32(sum_l2 * sum_x) - F32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = F32(0.0)
                this_scale = F32(sum_xl / sum_l2)
            cur_error = F32(0.0)
            for i in range(n):
                diff = F32(F32(F32(this_scale * F32(Laux[i])) + this_min) - x[i])
                diff = abs(diff) if use_mad else F32(diff * diff)
                cur_error = F32(cur_error + F32(weights[i] * diff))
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                vmin = this_min
    return scale, F32(-vmin)


@_helper
def _make_q3_quants(n, nmax, x, L):
    """Port of ``make_q3_quants(..., do_rmse=true)``; ``L`` gets ``l + nmax``."""
    vmax = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(F32(-nmax) / vmax)
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = nearest_int(F32(iscale * x[i]))
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l
        w = F32(x[i] * x[i])
        sumlx = F32(sumlx + F32(F32(w * x[i]) * F32(l)))
        suml2 = F32(suml2 + F32(F32(w * F32(l)) * F32(l)))
    for _itry in range(5):
        n_changed = 0
        for i in range(n):
            w = F32(x[i] * x[i])
            li = F32(L[i])
            slx = F32(sumlx - F32(F32(w * x[i]) * li))
            if slx > 0:
                sl2 = F32(suml2 - F32(F32(w * li) * li))
                new_l = nearest_int(F32(F32(x[i] * sl2) / slx))
                new_l = max(-nmax, min(nmax - 1, new_l))
                if new_l != L[i]:
                    fnl = F32(new_l)
                    slx = F32(slx + F32(F32(w * x[i]) * fnl))
                    sl2 = F32(sl2 + F32(F32(w * fnl) * fnl))
                    if sl2 > 0 and F32(F32(slx * slx) * suml2) > F32(F32(sumlx * sumlx) * sl2):
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return F32(sumlx / suml2) if suml2 > 0 else F32(0.0)


@_helper
def _make_qx_quants_rmse1(n, nmax, x, L):
    """Port of ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)``."""
    fn = F32(nmax)
    vmax = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            vmax = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(F32(-nmax) / vmax)
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = nearest_int(F32(iscale * x[i]))
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = F32(x[i] * x[i])
        sumlx = F32(sumlx + F32(F32(w * x[i]) * F32(l)))
        suml2 = F32(suml2 + F32(F32(w * F32(l)) * F32(l)))
    scale = F32(sumlx / suml2) if suml2 != 0 else F32(0.0)
    best = F32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = F32(F32(-F32(fn + F32(F32(0.1) * F32(step)))) / vmax)
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = nearest_int(F32(iscale * x[i]))
            l = max(-nmax, min(nmax - 1, l))
            w = F32(x[i] * x[i])
            sumlx = F32(sumlx + F32(F32(w * x[i]) * F32(l)))
            suml2 = F32(suml2 + F32(F32(w * F32(l)) * F32(l)))
        if suml2 > 0 and F32(sumlx * sumlx) > F32(best * suml2):
            for i in range(n):
                l = nearest_int(F32(iscale * x[i]))
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = F32(sumlx / suml2)
            best = F32(scale * sumlx)
    return scale


@_helper
def _get_scale_min_k4(j, q, off):
    """``get_scale_min_k4`` on the 12 packed scale bytes at ``q[off:off+12]``."""
    if j < 4:
        return np.int64(q[off + j]) & 63, np.int64(q[off + j + 4]) & 63
    sc = (np.int64(q[off + j + 4]) & 0xF) | ((np.int64(q[off + j - 4]) >> 6) << 4)
    m = (np.int64(q[off + j + 4]) >> 4) | ((np.int64(q[off + j]) >> 6) << 4)
    return sc, m


# ------------------------------------------------------------------------------ Q2_K


@_njit
def _quantize_q2_k(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 84), dtype=np.uint8)
    L = np.zeros(256, dtype=np.int64)
    Laux = np.zeros(16, dtype=np.int64)
    weights = np.zeros(16, dtype=np.float32)
    mins = np.zeros(16, dtype=np.float32)
    scales = np.zeros(16, dtype=np.float32)
    q4scale = F32(15.0)
    for i in range(nb):
        xb = x[i]
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(16):
            for l in range(16):
                weights[l] = abs(xb[16 * j + l])
            s, m = _make_qkx2_quants(
                16, 3, xb[16 * j : 16 * j + 16], weights, L[16 * j : 16 * j + 16], Laux,
                F32(-0.5), F32(0.1), 15, True,
            )
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        # layout: scales[16] (0-15), qs[64] (16-79), d (80-81), dmin (82-83)
        if max_scale > 0:
            iscale = F32(q4scale / max_scale)
            for j in range(16):
                out[i, j] = nearest_int(F32(iscale * scales[j])) & 0xFF
            d = write_fp16(out, i, 80, F32(max_scale / q4scale))
        else:
            for j in range(16):
                out[i, j] = 0
            d = write_fp16(out, i, 80, F32(0.0))
        if max_min > 0:
            iscale = F32(q4scale / max_min)
            for j in range(16):
                out[i, j] = (np.int64(out[i, j]) | (nearest_int(F32(iscale * mins[j])) << 4)) & 0xFF
            dmin = write_fp16(out, i, 82, F32(max_min / q4scale))
        else:
            dmin = write_fp16(out, i, 82, F32(0.0))
        for j in range(16):
            dl = F32(d * F32(np.int64(out[i, j]) & 0xF))
            if dl == 0:
                continue
            dm = F32(dmin * F32(np.int64(out[i, j]) >> 4))
            for ii in range(16):
                v = F32(F32(xb[16 * j + ii] + dm) / dl)
                l = max(0, min(3, nearest_int(v)))
                if keyed:
                    l = keyed_level(v, l, 0, 3, dirs[i, 16 * j + ii], delta)
                L[16 * j + ii] = l
        for j in range(0, 256, 128):
            for l in range(32):
                out[i, 16 + j // 4 + l] = (
                    L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
                ) & 0xFF
    return out


@_njit
def _dequantize_q2_k(data, H, y):
    nb = data.shape[0]
    for i in range(nb):
        d = H[np.int64(data[i, 80]) | (np.int64(data[i, 81]) << 8)]
        dmin = H[np.int64(data[i, 82]) | (np.int64(data[i, 83]) << 8)]
        k = 0
        isc = 0
        for n in range(0, 256, 128):
            qo = 16 + n // 4
            for shift in range(0, 8, 2):
                for half in range(2):
                    sc = np.int64(data[i, isc])
                    isc += 1
                    dl = F32(d * F32(sc & 0xF))
                    ml = F32(dmin * F32(sc >> 4))
                    for l in range(16):
                        q = (np.int64(data[i, qo + 16 * half + l]) >> shift) & 3
                        y[i, k] = F32(F32(dl * F32(q)) - ml)
                        k += 1
    return y


class Q2_K(NumbaKernel, qtype=QType.Q2_K):
    """2-bit k-quant with mins: 256 weights in 84 bytes (16 sub-blocks of 16).

    Block layout: ``scales: uint8[16]`` (0-15; low nibble = scale, high nibble = min of sub-block
    ``j``), ``qs: uint8[64]`` (16-79; 2-bit quants, for each 128-weight half the byte ``l`` holds
    weights ``l, l+32, l+64, l+96`` at bit offsets 0, 2, 4, 6), ``d: fp16`` (80-81),
    ``dmin: fp16`` (82-83); ``w = d * sc * q - dmin * m``.
    """

    quantize_fn = staticmethod(_quantize_q2_k)
    dequantize_fn = staticmethod(_dequantize_q2_k)


# ------------------------------------------------------------------------------ Q3_K


@_njit
def _quantize_q3_k(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 110), dtype=np.uint8)
    L = np.zeros(256, dtype=np.int64)
    scales = np.zeros(16, dtype=np.float32)
    # layout: hmask[32] (0-31), qs[64] (32-95), scales[12] (96-107), d (108-109)
    for i in range(nb):
        xb = x[i]
        max_scale = F32(0.0)
        amax = F32(0.0)
        for j in range(16):
            s = _make_q3_quants(16, 4, xb[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16])
            scales[j] = s
            a = abs(s)
            if a > amax:
                amax = a
                max_scale = s
        if max_scale != 0:
            iscale = F32(F32(-32.0) / max_scale)
            for j in range(16):
                l = c_to_int8(nearest_int(F32(iscale * scales[j])))
                l = max(-32, min(31, l)) + 32
                if j < 8:
                    out[i, 96 + j] = l & 0xF
                else:
                    out[i, 96 + j - 8] = (np.int64(out[i, 96 + j - 8]) | ((l & 0xF) << 4)) & 0xFF
                l >>= 4
                out[i, 96 + j % 4 + 8] = (np.int64(out[i, 96 + j % 4 + 8]) | (l << (2 * (j // 4)))) & 0xFF
            dall = write_fp16(out, i, 108, F32(F32(1.0) / iscale))
        else:
            dall = write_fp16(out, i, 108, F32(0.0))
        for j in range(16):
            if j < 8:
                sc = np.int64(out[i, 96 + j]) & 0xF
            else:
                sc = np.int64(out[i, 96 + j - 8]) >> 4
            sc = c_to_int8((sc | (((np.int64(out[i, 96 + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32)
            dl = F32(dall * F32(sc))
            if dl == 0:
                continue
            for ii in range(16):
                v = F32(xb[16 * j + ii] / dl)
                l = max(-4, min(3, nearest_int(v)))
                if keyed:
                    l = keyed_level(v, l, -4, 3, dirs[i, 16 * j + ii], delta)
                L[16 * j + ii] = l + 4
        m = 0
        hm = 1
        for j in range(256):
            if L[j] > 3:
                out[i, m] = (np.int64(out[i, m]) | hm) & 0xFF
                L[j] -= 4
            m += 1
            if m == 32:
                m = 0
                hm <<= 1
        for j in range(0, 256, 128):
            for l in range(32):
                out[i, 32 + j // 4 + l] = (
                    L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
                ) & 0xFF
    return out


@_njit
def _dequantize_q3_k(data, H, y):
    nb = data.shape[0]
    for i in range(nb):
        dall = H[np.int64(data[i, 108]) | (np.int64(data[i, 109]) << 8)]
        k = 0
        isc = 0
        m = 1
        for n in range(0, 256, 128):
            qo = 32 + n // 4
            for shift in range(0, 8, 2):
                for half in range(2):
                    j = isc
                    if j < 8:
                        sc = np.int64(data[i, 96 + j]) & 0xF
                    else:
                        sc = np.int64(data[i, 96 + j - 8]) >> 4
                    sc = (sc | (((np.int64(data[i, 96 + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
                    isc += 1
                    dl = F32(dall * F32(sc))
                    for l in range(16):
                        q = np.int64((np.int64(data[i, qo + 16 * half + l]) >> shift) & 3)
                        if (np.int64(data[i, 16 * half + l]) & m) == 0:
                            q -= 4
                        y[i, k] = F32(dl * F32(q))
                        k += 1
                m <<= 1
    return y


class Q3_K(NumbaKernel, qtype=QType.Q3_K):
    """3-bit symmetric k-quant: 256 weights in 110 bytes (16 sub-blocks of 16).

    Block layout: ``hmask: uint8[32]`` (0-31; bit ``b`` of byte ``m`` = high bit of weight
    ``32*b + m``), ``qs: uint8[64]`` (32-95; low 2 bits, packed as in Q2_K), ``scales: uint8[12]``
    (96-107; 16 six-bit scales biased by 32: low nibbles in bytes 0-7, top 2 bits in bytes
    8-11), ``d: fp16`` (108-109); ``w = d * (sc - 32) * (q - 4)``.
    """

    quantize_fn = staticmethod(_quantize_q3_k)
    dequantize_fn = staticmethod(_dequantize_q3_k)


# ------------------------------------------------------------------------------ Q4_K / Q5_K


@_helper
def _qkx_superblock(xb, nmax, rmin, nstep, L, Laux, weights, scales, mins, out, i, drow, delta):
    """Shared part of Q4_K/Q5_K: sub-block fits, packed 6-bit scales at bytes 4-15, d/dmin at 0-3,
    then the final quants in ``L``."""
    max_scale = F32(0.0)
    max_min = F32(0.0)
    for j in range(8):
        sum_x2 = F32(0.0)
        for l in range(32):
            v = xb[32 * j + l]
            sum_x2 = F32(sum_x2 + F32(v * v))
        av_x = F32(np.sqrt(F32(sum_x2 / F32(32.0))))
        for l in range(32):
            weights[l] = F32(av_x + abs(xb[32 * j + l]))
        s, m = _make_qkx2_quants(
            32, nmax, xb[32 * j : 32 * j + 32], weights, L[32 * j : 32 * j + 32], Laux,
            rmin, F32(0.1), nstep, False,
        )
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = F32(F32(63.0) / max_scale) if max_scale > 0 else F32(0.0)
    inv_min = F32(F32(63.0) / max_min) if max_min > 0 else F32(0.0)
    for j in range(8):
        ls = min(63, nearest_int(F32(inv_scale * scales[j])) & 0xFF)
        lm = min(63, nearest_int(F32(inv_min * mins[j])) & 0xFF)
        if j < 4:
            out[i, 4 + j] = ls
            out[i, 4 + j + 4] = lm
        else:
            out[i, 4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            out[i, 4 + j - 4] = (np.int64(out[i, 4 + j - 4]) | ((ls >> 4) << 6)) & 0xFF
            out[i, 4 + j] = (np.int64(out[i, 4 + j]) | ((lm >> 4) << 6)) & 0xFF
    d = write_fp16(out, i, 0, F32(max_scale / F32(63.0)))
    dmin = write_fp16(out, i, 2, F32(max_min / F32(63.0)))
    for j in range(8):
        sc, m = _get_scale_min_k4(j, out[i], 4)
        dl = F32(d * F32(sc))
        if dl == 0:
            continue
        dm = F32(dmin * F32(m))
        for ii in range(32):
            v = F32(F32(xb[32 * j + ii] + dm) / dl)
            l = max(0, min(nmax, nearest_int(v)))
            if drow.shape[0] != 0:
                l = keyed_level(v, l, 0, nmax, drow[32 * j + ii], delta)
            L[32 * j + ii] = l


@_njit
def _quantize_q4_k(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    no_row = np.zeros(0, dtype=np.int8)
    out = np.zeros((nb, 144), dtype=np.uint8)
    L = np.zeros(256, dtype=np.int64)
    Laux = np.zeros(32, dtype=np.int64)
    weights = np.zeros(32, dtype=np.float32)
    mins = np.zeros(8, dtype=np.float32)
    scales = np.zeros(8, dtype=np.float32)
    for i in range(nb):
        _qkx_superblock(x[i], 15, F32(-1.0), 20, L, Laux, weights, scales, mins, out, i,
                        dirs[i] if keyed else no_row, delta)
        for j in range(0, 256, 64):
            for l in range(32):
                out[i, 16 + j // 2 + l] = (L[j + l] | (L[j + l + 32] << 4)) & 0xFF
    return out


@_njit
def _dequantize_q4_k(data, H, y):
    nb = data.shape[0]
    for i in range(nb):
        d = H[np.int64(data[i, 0]) | (np.int64(data[i, 1]) << 8)]
        dmin = H[np.int64(data[i, 2]) | (np.int64(data[i, 3]) << 8)]
        row = data[i]
        for j in range(4):
            sc1, m1 = _get_scale_min_k4(2 * j, row, 4)
            sc2, m2 = _get_scale_min_k4(2 * j + 1, row, 4)
            d1 = F32(d * F32(sc1))
            mm1 = F32(dmin * F32(m1))
            d2 = F32(d * F32(sc2))
            mm2 = F32(dmin * F32(m2))
            qo = 16 + 32 * j
            for l in range(32):
                q = np.int64(row[qo + l])
                y[i, 64 * j + l] = F32(F32(d1 * F32(q & 0xF)) - mm1)
                y[i, 64 * j + 32 + l] = F32(F32(d2 * F32(q >> 4)) - mm2)
    return y


class Q4_K(NumbaKernel, qtype=QType.Q4_K):
    """4-bit k-quant with mins: 256 weights in 144 bytes (8 sub-blocks of 32).

    Block layout: ``d: fp16`` (0-1), ``dmin: fp16`` (2-3), ``scales: uint8[12]`` (4-15; eight
    6-bit scales and eight 6-bit mins: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scale) and
    4-7 (min), sub-blocks 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the high bits
    of bytes 0-7), ``qs: uint8[128]`` (16-143; for each 64 weights, 32 bytes: low nibble = weight
    ``l``, high nibble = weight ``l + 32``); ``w = d * sc * q - dmin * m``.
    """

    quantize_fn = staticmethod(_quantize_q4_k)
    dequantize_fn = staticmethod(_dequantize_q4_k)


@_njit
def _quantize_q5_k(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    no_row = np.zeros(0, dtype=np.int8)
    out = np.zeros((nb, 176), dtype=np.uint8)
    L = np.zeros(256, dtype=np.int64)
    Laux = np.zeros(32, dtype=np.int64)
    weights = np.zeros(32, dtype=np.float32)
    mins = np.zeros(8, dtype=np.float32)
    scales = np.zeros(8, dtype=np.float32)
    for i in range(nb):
        _qkx_superblock(x[i], 31, F32(-0.5), 15, L, Laux, weights, scales, mins, out, i,
                        dirs[i] if keyed else no_row, delta)
        # qh[32] at 16-47, qs[128] at 48-175
        m1 = 1
        m2 = 2
        for n in range(0, 256, 64):
            qo = 48 + n // 2
            for j in range(32):
                l1 = L[n + j]
                if l1 > 15:
                    l1 -= 16
                    out[i, 16 + j] = (np.int64(out[i, 16 + j]) | m1) & 0xFF
                l2 = L[n + j + 32]
                if l2 > 15:
                    l2 -= 16
                    out[i, 16 + j] = (np.int64(out[i, 16 + j]) | m2) & 0xFF
                out[i, qo + j] = (l1 | (l2 << 4)) & 0xFF
            m1 <<= 2
            m2 <<= 2
    return out


@_njit
def _dequantize_q5_k(data, H, y):
    nb = data.shape[0]
    for i in range(nb):
        d = H[np.int64(data[i, 0]) | (np.int64(data[i, 1]) << 8)]
        dmin = H[np.int64(data[i, 2]) | (np.int64(data[i, 3]) << 8)]
        row = data[i]
        u1 = 1
        u2 = 2
        for j in range(4):
            sc1, m1 = _get_scale_min_k4(2 * j, row, 4)
            sc2, m2 = _get_scale_min_k4(2 * j + 1, row, 4)
            d1 = F32(d * F32(sc1))
            mm1 = F32(dmin * F32(m1))
            d2 = F32(d * F32(sc2))
            mm2 = F32(dmin * F32(m2))
            qo = 48 + 32 * j
            for l in range(32):
                q = np.int64(row[qo + l])
                h = np.int64(row[16 + l])
                q1 = (q & 0xF) + (16 if (h & u1) else 0)
                q2 = (q >> 4) + (16 if (h & u2) else 0)
                y[i, 64 * j + l] = F32(F32(d1 * F32(q1)) - mm1)
                y[i, 64 * j + 32 + l] = F32(F32(d2 * F32(q2)) - mm2)
            u1 <<= 2
            u2 <<= 2
    return y


class Q5_K(NumbaKernel, qtype=QType.Q5_K):
    """5-bit k-quant with mins: 256 weights in 176 bytes (8 sub-blocks of 32).

    Block layout: ``d: fp16`` (0-1), ``dmin: fp16`` (2-3), ``scales: uint8[12]`` (4-15, as Q4_K),
    ``qh: uint8[32]`` (16-47; for 64-weight chunk ``c``, bit ``2c`` of byte ``l`` = 5th bit of
    weight ``64c + l`` and bit ``2c+1`` that of weight ``64c + 32 + l``), ``qs: uint8[128]``
    (48-175, low nibbles as Q4_K); ``w = d * sc * q - dmin * m``.
    """

    quantize_fn = staticmethod(_quantize_q5_k)
    dequantize_fn = staticmethod(_dequantize_q5_k)


# ------------------------------------------------------------------------------ Q6_K


@_njit
def _quantize_q6_k(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 210), dtype=np.uint8)
    L = np.zeros(256, dtype=np.int64)
    scales = np.zeros(16, dtype=np.float32)
    # layout: ql[128] (0-127), qh[64] (128-191), scales int8[16] (192-207), d (208-209)
    for i in range(nb):
        xb = x[i]
        max_scale = F32(0.0)
        max_abs_scale = F32(0.0)
        for ib in range(16):
            s = _make_qx_quants_rmse1(16, 32, xb[16 * ib : 16 * ib + 16], L[16 * ib : 16 * ib + 16])
            scales[ib] = s
            a = abs(s)
            if a > max_abs_scale:
                max_abs_scale = a
                max_scale = s
        if max_abs_scale < GROUP_MAX_EPS:
            for b in range(210):
                out[i, b] = 0
            continue
        iscale = F32(F32(-128.0) / max_scale)
        d = write_fp16(out, i, 208, F32(F32(1.0) / iscale))
        for ib in range(16):
            out[i, 192 + ib] = min(127, nearest_int(F32(iscale * scales[ib]))) & 0xFF
        for j in range(16):
            sc = c_to_int8(np.int64((out[i, 192 + j])))
            dl = F32(d * F32(sc))
            if dl == 0:
                continue
            for ii in range(16):
                v = F32(xb[16 * j + ii] / dl)
                l = max(-32, min(31, nearest_int(v)))
                if keyed:
                    l = keyed_level(v, l, -32, 31, dirs[i, 16 * j + ii], delta)
                L[16 * j + ii] = l + 32
        for j in range(0, 256, 128):
            qlo = j // 2
            qho = 128 + j // 4
            for l in range(32):
                q1 = L[j + l] & 0xF
                q2 = L[j + l + 32] & 0xF
                q3 = L[j + l + 64] & 0xF
                q4 = L[j + l + 96] & 0xF
                out[i, qlo + l] = (q1 | (q3 << 4)) & 0xFF
                out[i, qlo + l + 32] = (q2 | (q4 << 4)) & 0xFF
                out[i, qho + l] = (
                    (L[j + l] >> 4)
                    | ((L[j + l + 32] >> 4) << 2)
                    | ((L[j + l + 64] >> 4) << 4)
                    | ((L[j + l + 96] >> 4) << 6)
                ) & 0xFF
    return out


@_njit
def _dequantize_q6_k(data, H, y):
    nb = data.shape[0]
    ds = np.empty(16, dtype=np.float32)
    for i in range(nb):
        d = H[np.int64(data[i, 208]) | (np.int64(data[i, 209]) << 8)]
        row = data[i]
        for j in range(16):
            ds[j] = F32(d * F32(c_to_int8(np.int64(row[192 + j]))))
        for n in range(2):
            qlo = 64 * n
            qho = 128 + 32 * n
            base = 128 * n
            for l in range(32):
                isc = 8 * n + l // 16
                h = np.int64(row[qho + l])
                a = np.int64(row[qlo + l])
                b = np.int64(row[qlo + l + 32])
                q1 = ((a & 0xF) | ((h & 3) << 4)) - 32
                q2 = ((b & 0xF) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((b >> 4) | (((h >> 6) & 3) << 4)) - 32
                y[i, base + l] = F32(ds[isc] * F32(q1))
                y[i, base + l + 32] = F32(ds[isc + 2] * F32(q2))
                y[i, base + l + 64] = F32(ds[isc + 4] * F32(q3))
                y[i, base + l + 96] = F32(ds[isc + 6] * F32(q4))
    return y


class Q6_K(NumbaKernel, qtype=QType.Q6_K):
    """6-bit symmetric k-quant: 256 weights in 210 bytes (16 sub-blocks of 16).

    Block layout: ``ql: uint8[128]`` (0-127; low 4 bits), ``qh: uint8[64]`` (128-191; high 2
    bits), ``scales: int8[16]`` (192-207), ``d: fp16`` (208-209). For each 128-weight half ``n``,
    ``ql[64n + l]`` holds weights ``l`` (low nibble) and ``l + 64`` (high), ``ql[64n + 32 + l]``
    weights ``l + 32`` and ``l + 96``, and ``qh[32n + l]`` their high bits at offsets 0, 2, 4, 6
    (for ``l, l+32, l+64, l+96``); ``w = d * sc * (q - 32)``.
    """

    quantize_fn = staticmethod(_quantize_q6_k)
    dequantize_fn = staticmethod(_dequantize_q6_k)
