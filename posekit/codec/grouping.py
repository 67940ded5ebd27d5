"""PAF grouping, the second half of decoding: peaks -> limb connections -> people (numba kernels).

Shapes for one image: J joints, L limbs, K peaks (all joints), C accepted connections.

* :func:`connect_limbs` scores every (start, end) candidate pair of every limb by the PAF line integral
  (``n_samples`` bilinear samples on the stride-s PAF maps ``(2L, h, w)``), keeps pairs above ``min_score`` on at
  least ``min_count`` samples, and matches them one-to-one greedily by score.
* :func:`group_people` assembles the connections limb by limb (OpenPose): a connection extends the person that owns
  one of its peaks, merges two partial people that share no joint type, or starts a person where ``can_start``
  allows it.

:class:`posekit.codec.decode.Decoder` finds the peaks and calls these two; they are kept apart because they are
numba-compiled (``cache=True``) and take plain arrays only.
"""

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _paf_dot(paf, k, gx, gy, ux, uy):
    """Bilinear sample of limb k's PAF vector (channels 2k, 2k+1) at grid point (gx, gy), clamped to the map,
    dotted with the unit vector (ux, uy)."""
    h, w = paf.shape[1], paf.shape[2]
    gx = min(max(gx, 0.0), w - 1.0)
    gy = min(max(gy, 0.0), h - 1.0)
    x0, y0 = int(gx), int(gy)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = gx - x0, gy - y0
    w00, w01, w10, w11 = (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy
    cx, cy = 2 * k, 2 * k + 1
    vx = paf[cx, y0, x0] * w00 + paf[cx, y0, x1] * w01 + paf[cx, y1, x0] * w10 + paf[cx, y1, x1] * w11
    vy = paf[cy, y0, x0] * w00 + paf[cy, y0, x1] * w01 + paf[cy, y1, x0] * w10 + paf[cy, y1, x1] * w11
    return vx * ux + vy * uy


@numba.njit(cache=True, nogil=True)
def connect_limbs(paf, limbs, xy, offsets, stride, n_samples, min_score, min_count):
    """Score every candidate pair of every limb and match them one-to-one greedily.

    Args:
        paf: (2L, h, w) float32. limbs: (L, 2) int64 joint indices. xy: (K, 2) float32 peaks (input px),
        grouped by joint: joint j's peaks are ``offsets[j]:offsets[j+1]``.
    Returns:
        (limb, a, b, score) arrays of the C accepted connections (a, b: peak indices), ordered by limb and,
        within a limb, by decreasing score.
    """
    c = (stride - 1.0) / 2.0
    cap = 0
    for k in range(limbs.shape[0]):
        ja, jb = limbs[k, 0], limbs[k, 1]
        cap += min(offsets[ja + 1] - offsets[ja], offsets[jb + 1] - offsets[jb])
    out_limb = np.empty(cap, np.int64)
    out_a = np.empty(cap, np.int64)
    out_b = np.empty(cap, np.int64)
    out_score = np.empty(cap, np.float32)
    n_out = 0
    for k in range(limbs.shape[0]):
        a0, a1 = offsets[limbs[k, 0]], offsets[limbs[k, 0] + 1]
        b0, b1 = offsets[limbs[k, 1]], offsets[limbs[k, 1] + 1]
        na, nb = a1 - a0, b1 - b0
        if na == 0 or nb == 0:
            continue
        cand_score = np.empty(na * nb, np.float32)
        cand_a = np.empty(na * nb, np.int64)
        cand_b = np.empty(na * nb, np.int64)
        m = 0
        for i in range(a0, a1):
            ax, ay = xy[i, 0], xy[i, 1]
            for j in range(b0, b1):
                dx, dy = xy[j, 0] - ax, xy[j, 1] - ay
                norm = math.sqrt(dx * dx + dy * dy)
                if norm < 1e-6:
                    continue
                ux, uy = dx / norm, dy / norm
                acc, cnt = 0.0, 0
                for s in range(n_samples):
                    if cnt + n_samples - s < min_count:  # cannot pass any more: most far-apart pairs stop here
                        break
                    t = s / (n_samples - 1.0)
                    dot = _paf_dot(paf, k, (ax + t * dx - c) / stride, (ay + t * dy - c) / stride, ux, uy)
                    if dot > min_score:
                        acc += dot
                        cnt += 1
                if cnt >= min_count and acc > 0.0:
                    cand_score[m] = acc / cnt  # mean over the samples that passed (TAO, OpenPose)
                    cand_a[m] = i
                    cand_b[m] = j
                    m += 1
        order = np.argsort(-cand_score[:m], kind="mergesort")
        used_a = np.zeros(na, np.bool_)
        used_b = np.zeros(nb, np.bool_)
        taken, limit = 0, min(na, nb)
        for o in order:
            i, j = cand_a[o], cand_b[o]
            if used_a[i - a0] or used_b[j - b0]:
                continue
            used_a[i - a0] = True
            used_b[j - b0] = True
            out_limb[n_out] = k
            out_a[n_out] = i
            out_b[n_out] = j
            out_score[n_out] = cand_score[o]
            n_out += 1
            taken += 1
            if taken == limit:
                break
    return out_limb[:n_out], out_a[:n_out], out_b[:n_out], out_score[:n_out]


@numba.njit(cache=True, nogil=True)
def group_people(conn_limb, conn_a, conn_b, conn_score, limbs, peak_score, can_start, num_joints):
    """Assemble connections into people (OpenPose order: limb by limb, best connection first).

    Each peak belongs to at most one person (``owner``). A connection whose two peaks are unowned starts a
    person (if its limb may); one owned end extends that person if the other joint's slot is free; two
    owners are merged when they share no joint type. Returns slots (P, J) peak indices (-1 = missing),
    score_sum (P,) = peak scores + limb scores, count (P,) joints, for the P people alive at the end.
    """
    n = conn_limb.shape[0]
    owner = np.full(peak_score.shape[0], -1, np.int64)
    slots = np.full((n + 1, num_joints), -1, np.int64)
    total = np.zeros(n + 1, np.float64)
    count = np.zeros(n + 1, np.int64)
    alive = np.zeros(n + 1, np.bool_)
    people = 0
    for c in range(n):
        k, a, b, s = conn_limb[c], conn_a[c], conn_b[c], conn_score[c]
        ja, jb = limbs[k, 0], limbs[k, 1]
        ha, hb = owner[a], owner[b]
        if ha < 0 and hb < 0:
            if not can_start[k]:
                continue
            p = people
            people += 1
            slots[p, ja], slots[p, jb] = a, b
            owner[a], owner[b] = p, p
            total[p] = peak_score[a] + peak_score[b] + s
            count[p] = 2
            alive[p] = True
        elif hb < 0:
            if slots[ha, jb] < 0:
                slots[ha, jb] = b
                owner[b] = ha
                total[ha] += peak_score[b] + s
                count[ha] += 1
        elif ha < 0:
            if slots[hb, ja] < 0:
                slots[hb, ja] = a
                owner[a] = hb
                total[hb] += peak_score[a] + s
                count[hb] += 1
        elif ha != hb:
            disjoint = True
            for j in range(num_joints):
                if slots[ha, j] >= 0 and slots[hb, j] >= 0:
                    disjoint = False
                    break
            if disjoint:
                for j in range(num_joints):
                    if slots[hb, j] >= 0:
                        slots[ha, j] = slots[hb, j]
                        owner[slots[hb, j]] = ha
                total[ha] += total[hb] + s
                count[ha] += count[hb]
                alive[hb] = False
    keep = alive[:people]
    return slots[:people][keep], total[:people][keep], count[:people][keep]
