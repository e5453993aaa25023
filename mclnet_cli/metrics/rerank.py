"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), written from the paper's definitions.

Steps, over the union of queries and gallery (N items):

1. Original distance d (squared Euclidean of L2-normalised features = 2 - 2 cos),
   each row divided by its maximum (what the paper's released code ends up doing).
2. k-reciprocal neighbours R(i, k1): items j in i's top k1+1 whose own top k1+1
   contains i. Expansion: for each j in R(i, k1), if R(j, k1/2) shares more than
   2/3 of its items with R(i, k1), add R(j, k1/2).
3. Encoding V[i, j] = exp(-d(i, j)) / sum over the expanded set, for j in it; 0 elsewhere.
4. Local query expansion: V[i] <- mean of V over i's top k2 neighbours.
5. Jaccard distance d_J(i, j) = 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk);
   with rows summing to 1, sum max = 2 - sum min.
6. Final distance: (1 - lambda) d_J + lambda d, on the query x gallery block.

Memory is O(N^2) (two dense N x N float32 matrices), as in the paper's method.
"""

from __future__ import annotations

import numpy as np

_ROWS = 256


def _reciprocal(top: np.ndarray, k: int) -> list[np.ndarray]:
    """Per item i: the items j in i's first k+1 neighbours that also have i in theirs."""
    n = top.shape[0]
    neigh = top[:, : k + 1]
    back = neigh[neigh]  # [n, k+1, k+1]: neighbours of each neighbour
    mutual = (back == np.arange(n)[:, None, None]).any(axis=2)
    return [neigh[i][mutual[i]] for i in range(n)]


def k_reciprocal_distance(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked [queries, gallery] distances from L2-normalised features."""
    q = np.asarray(query_features, dtype=np.float32)
    g = np.asarray(gallery_features, dtype=np.float32)
    nq = q.shape[0]
    feats = np.concatenate([q, g], axis=0)
    n = feats.shape[0]
    if n == 0 or nq == 0 or g.shape[0] == 0:
        return np.zeros((nq, g.shape[0]), dtype=np.float32)
    k1 = max(1, min(k1, n - 1))
    k2 = max(1, min(k2, n))

    dist = np.maximum(2.0 - 2.0 * (feats @ feats.T), 0.0).astype(np.float32)
    dist /= np.maximum(dist.max(axis=1, keepdims=True), 1e-12)
    width = max(k1 + 1, k2)
    top = np.empty((n, width), dtype=np.int64)
    for start in range(0, n, _ROWS):  # row chunks keep the argsort's memory small
        top[start : start + _ROWS] = np.argsort(dist[start : start + _ROWS], axis=1, kind="stable")[:, :width]

    full = _reciprocal(top, k1)
    half = _reciprocal(top, int(round(k1 / 2)))
    encoding = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        members = full[i]
        expanded = [members]
        member_set = set(members.tolist())
        for j in members:
            candidate = half[j]
            if len(member_set.intersection(candidate.tolist())) > 2.0 / 3.0 * len(candidate):
                expanded.append(candidate)
        chosen = np.unique(np.concatenate(expanded + [np.array([i])]))  # i itself when ties hid it
        weights = np.exp(-dist[i, chosen])
        encoding[i, chosen] = weights / weights.sum()

    if k2 > 1:
        expanded_encoding = np.empty_like(encoding)
        for start in range(0, n, _ROWS):
            rows = slice(start, start + _ROWS)
            expanded_encoding[rows] = encoding[top[rows, :k2]].mean(axis=1)
        encoding = expanded_encoding

    # Jaccard over the query rows against the gallery rows, one query at a time.
    gallery_columns = np.ascontiguousarray(encoding[nq:].T)  # [k, gallery j] = V[j, k]
    jaccard = np.empty((nq, n - nq), dtype=np.float32)
    for i in range(nq):
        nonzero = np.flatnonzero(encoding[i])
        overlap = np.minimum(gallery_columns[nonzero], encoding[i, nonzero][:, None]).sum(axis=0)
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]
