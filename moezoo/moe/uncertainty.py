"""The uncertainty-aware router (UaR, MoFME): gate values calibrated by how much they vary under MC dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .routers import TopKRouter


class UncertaintyRouter(TopKRouter):
    """Token-choice top-k whose gate values are calibrated by their uncertainty in training (MoFME's UaR, Zhang et
    al. AAAI 2024, "Efficient Deweather Mixture-of-Experts with Uncertainty-aware Feature-wise Linear Modulation").

    In training the router scores S stochastic copies of each token (MC dropout on the router input, rate p),
    p^(s) = softmax(dropout_s(x) W_g), and calibrates the gate with their mean and variance per expert:

        mu_e = mean_s p_e^(s),   sigma_e^2 = var_s p_e^(s)   (unbiased),
        g_e = mu_e * c_e,        c_e = mu_e^2 / (mu_e^2 + sigma_e^2)

    so an expert whose weight is as uncertain as it is large (a coefficient of variation of 1) keeps half of it. The
    k experts of highest g are chosen and their g renormalised over the k (k > 1), as ``TopKRouter`` does with the
    scores. The gradient reaches the gate through mu and c: besides routing, the router learns weights that do not
    hinge on a few input features. In eval the router is deterministic (no dropout): g = p, the plain top-k router.

    What differs from the official code (github.com/RoyZry98/MoFME-Pytorch, ``models/moe/film.py``,
    ``Transformer_MoE_FiLM.forward``): it runs its router 5 times on the same input with no dropout, so the samples
    are equal up to rounding; it then averages Mahalanobis-whitened, unit-normed deviations from their mean (rounding
    noise), keeps its list of samples across layers, and its ``einsum('ijk,jklm->ijlm')`` pairs the deviations' batch
    axis with the covariance's token axis, so a training step raises a shape error unless batch = tokens = experts
    (run here on random weights). Here the samples differ (dropout) and the calibration is the mean scaled by a
    per-expert confidence; ``num_samples``=5 as there.

    Args (besides ``TopKRouter``'s):
        num_samples: S stochastic passes in training (S >= 2; the variance needs two).
        input_dropout: p, the dropout rate on the router input of each pass.
    """

    def __init__(self, dim: int, num_experts: int, k: int = 2, *, num_samples: int = 5, input_dropout: float = 0.1,
                 **kwargs):
        super().__init__(dim, num_experts, k, **kwargs)
        if num_samples < 2:
            raise ValueError(f"uncertainty router: num_samples={num_samples} must be at least 2 (for a variance)")
        if not 0.0 < input_dropout < 1.0:
            raise ValueError(f"uncertainty router: input_dropout={input_dropout} must be in (0, 1)")
        self.num_samples, self.input_dropout = num_samples, input_dropout

    def sample_scores(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        """The scores [S, T, slots] of S passes of the router with dropout on its input."""
        samples = []
        for _ in range(self.num_samples):
            logits = self.gate_logits(F.dropout(x, self.input_dropout, training=True))
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            samples.append(self.scores(logits))
        return torch.stack(samples)

    @staticmethod
    def calibrated(samples: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        """g = mu * mu^2 / (mu^2 + sigma^2) [T, slots] from score samples [S, T, slots]."""
        mean, var = samples.mean(0), samples.var(0, unbiased=True)
        return mean * mean.square() / (mean.square() + var).clamp_min(eps)

    def calibrate(self, x, probs, allowed):
        if not self.training:
            return probs
        return self.calibrated(self.sample_scores(x, allowed))

    def extra_repr(self) -> str:
        return f"k={self.k}, num_samples={self.num_samples}, input_dropout={self.input_dropout}"
