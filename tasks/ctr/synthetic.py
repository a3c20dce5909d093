"""The embedded default of the CTR family: generated multi-domain, two-task click data with a known structure.

Rows belong to ``num_domains`` domains of unequal size (shares proportional to 1, 1/2, 1/3, ...). Features: eight
categorical fields ``c0..c7`` (cardinalities 20 to 1000) and four numeric ``n0..n3`` (standard normal), a ``user``
column (1,000 users per domain, each with a personal bias) and the domain name (``domain_0``, ...). The domains'
populations differ as real scenarios' do: 80 % of a domain's ``c6`` values come from its own three values, and
``n1``, ``n2`` are shifted per domain (a domain-blind model such as AdaptDHM can find the domains from these).

    click logit     = base_d + shared(c1, n3) + user_u + sum over the domain's own fields S_d of their effects
    purchase logit  = base_p + 0.8 * (click logit without its base) + own(c2, n0)

Domain d's own fields S_d are three categorical fields and one numeric field that no other domain uses (as far as
the 8 + 4 fields allow; with more than 3 domains they repeat), so a model that specialises per domain helps: the
domains differ in which features matter, and the tasks share most of their signal (purchase reuses click's). Click
rate is about 26 %, purchase about 5 %. The true probabilities are kept (``p_click``, ``p_purchase`` in ``truth``)
so the best reachable AUC (the oracle's) is known: for the default 100,000 rows and seed 0, 0.848 for click and
0.871 for purchase (``oracle_auc``; checked by ``tests/tasks/ctr/test_ctr_data.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CARDINALITIES = (20, 50, 100, 200, 500, 1000, 10, 30)
CATEGORICAL = tuple(f"c{i}" for i in range(len(CARDINALITIES)))
NUMERIC = ("n0", "n1", "n2", "n3")
USERS_PER_DOMAIN = 1000


def domain_fields(domain: int) -> tuple[list[int], int]:
    """The categorical fields and the numeric field only domain ``domain`` uses (c1 and n3 are shared by all)."""
    own = [0, 3, 4, 5, 6, 7, 2, 4, 7]  # three per domain, skipping the shared c1
    start = (3 * domain) % 9
    return [own[(start + i) % 9] for i in range(3)], [0, 1, 2][domain % 3]


def generate(num_samples: int = 100_000, num_domains: int = 3, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, truth): the generated rows and their true click / purchase probabilities."""
    rng = np.random.default_rng(seed)
    shares = 1.0 / np.arange(1, num_domains + 1)
    domain = rng.choice(num_domains, size=num_samples, p=shares / shares.sum())
    categorical = {name: rng.integers(0, n, num_samples) for name, n in zip(CATEGORICAL, CARDINALITIES)}
    numeric = {name: rng.standard_normal(num_samples) for name in NUMERIC}
    # the domains' populations differ too (as real scenarios' users and items do): c6 mostly takes values of the
    # domain's own range, and n1, n2 are shifted per domain; this is what a domain-blind model can cluster on
    own_range = rng.random(num_samples) < 0.8
    c6 = (3 * domain + rng.integers(0, 3, num_samples)) % CARDINALITIES[6]
    categorical["c6"] = np.where(own_range, c6, categorical["c6"])
    numeric["n1"] += 1.5 * (domain - (num_domains - 1) / 2)
    numeric["n2"] -= 1.0 * (domain - (num_domains - 1) / 2)
    effects = {name: rng.standard_normal(n) for name, n in zip(CATEGORICAL, CARDINALITIES)}
    purchase_effects = {name: rng.standard_normal(n) for name, n in zip(CATEGORICAL, CARDINALITIES)}
    user = domain * USERS_PER_DOMAIN + rng.integers(0, USERS_PER_DOMAIN, num_samples)
    user_bias = rng.normal(0.0, 0.5, num_domains * USERS_PER_DOMAIN)

    signal = 0.6 * effects["c1"][categorical["c1"]] + 0.4 * numeric["n3"] + user_bias[user]
    for d in range(num_domains):
        rows = domain == d
        fields, number = domain_fields(d)
        for f in fields:
            signal[rows] += 0.8 * effects[CATEGORICAL[f]][categorical[CATEGORICAL[f]][rows]]
        signal[rows] += 0.6 * numeric[NUMERIC[number]][rows]
    base = np.linspace(-1.9, -1.4, num_domains)[domain]
    p_click = 1 / (1 + np.exp(-(base + signal)))
    own = 0.8 * purchase_effects["c2"][categorical["c2"]] + 0.5 * numeric["n0"]
    p_purchase = 1 / (1 + np.exp(-(-4.6 + 0.8 * signal + own)))
    names = np.array([f"domain_{d}" for d in range(num_domains)])
    table = pd.DataFrame({"domain": names[domain], "user": user,
                          **{k: v for k, v in categorical.items()}, **numeric,
                          "click": (rng.random(num_samples) < p_click).astype(int),
                          "purchase": (rng.random(num_samples) < p_purchase).astype(int)})
    return table, pd.DataFrame({"p_click": p_click, "p_purchase": p_purchase})


def oracle_auc(table: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """AUC of the true probabilities: the best any model can reach on this sample."""
    from sklearn.metrics import roc_auc_score

    return {task: float(roc_auc_score(table[task], truth[f"p_{task}"])) for task in ("click", "purchase")}
