"""GAUC: the impression-weighted mean of per-user AUC (Zhou et al., DIN, KDD 2018), over users with both classes.

    GAUC = sum_u n_u AUC_u / sum_u n_u,   n_u = impressions of user u; users whose labels are all 0 or all 1 are left
    out (their AUC is undefined).

AUC_u by the rank-sum (Mann-Whitney) formula with average ranks for ties, all users at once through pandas.
"""

from __future__ import annotations

import pandas as pd
import torch


def gauc(preds: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """GAUC of scores ``preds`` [N] for 0/1 ``labels`` [N] grouped by ``users`` [N]; NaN if no user has both."""
    frame = pd.DataFrame({"user": users.cpu().numpy(), "pred": preds.detach().float().cpu().numpy(),
                          "label": labels.cpu().numpy() > 0.5})
    frame["rank"] = frame.groupby("user")["pred"].rank(method="average")
    per_user = frame.groupby("user").agg(n=("label", "size"), pos=("label", "sum"))
    per_user["rank_pos"] = frame[frame["label"]].groupby("user")["rank"].sum()
    per_user = per_user[(per_user["pos"] > 0) & (per_user["pos"] < per_user["n"])]
    if per_user.empty:
        return torch.tensor(float("nan"))
    neg = per_user["n"] - per_user["pos"]
    auc = (per_user["rank_pos"] - per_user["pos"] * (per_user["pos"] + 1) / 2) / (per_user["pos"] * neg)
    return torch.tensor(float((auc * per_user["n"]).sum() / per_user["n"].sum()))
