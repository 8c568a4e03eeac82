"""PPO math for RLHF: masked statistics, KL estimators, rewards, GAE, losses, KL control.

Pure functions on torch tensors, no trainer. Unless stated otherwise a tensor is shaped
``(B, T)`` (batch, response length) and comes with ``mask``: 1 for real response tokens
(up to and including the EOS), 0 for padding after it. The mask is a prefix of ones per
row. Padded positions are never read: they may hold garbage (even NaN/inf) and every
per-token output is zero there.

Log-probs and entropies from logits, and cutting responses after their EOS, are
:mod:`kuberlhf.models.generation` (evaluation uses them too).

References: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019
(adaptive KL), Schulman 2020 "Approximating KL divergence" (k1/k2/k3).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = [
    "AdaptiveKLController", "FixedKLController", "NonFiniteError", "check_finite", "gae", "kl_estimate",
    "masked_mean", "masked_var", "masked_whiten", "per_token_rewards", "policy_loss", "value_loss",
]


class NonFiniteError(ValueError):
    """A training quantity (reward, loss, advantage, ...) holds NaN or inf."""


def _zero_pad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is set, 0 elsewhere (``torch.where``, so NaN/inf padding cannot leak)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked entries: ``sum(x * mask, dim) / sum(mask, dim)``.

    Over all entries when ``dim`` is None. An empty mask (sum 0) gives 0, not NaN.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return _zero_pad(x, mask).sum() / m.sum().clamp_min(1)
    return _zero_pad(x, mask).sum(dim) / m.sum(dim).clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked entries: ``mean((x - mean(x))^2)``, times ``n / (n - 1)`` if unbiased.

    ``n = sum(mask)``; raises ValueError when n < 2 (unbiased) or n < 1.
    """
    n = int(mask.sum().item())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} masked entries, got {n}")
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalize the masked entries: ``(x - mu) / sqrt(var + 1e-8)`` with mu, unbiased var over them.

    With ``shift_mean=False`` mu is added back (scale only). Padded positions come back 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_pad(whitened, mask)


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: Literal["k1", "k2", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token estimator of KL(policy || ref) from the log-probs of tokens sampled from the policy.

    With ``d = logp - logp_ref`` and ``r = exp(-d) = p_ref / p``:

    * ``k1 = d``: unbiased, can be negative per token;
    * ``k2 = d^2 / 2``: biased, low variance, >= 0;
    * ``k3 = (r - 1) - log r``: unbiased (``E_p[r] = 1``), >= 0 per token.
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d.square()
    if kind == "k3":
        log_r = -d
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected 'k1', 'k2' or 'k3'")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-shaped rewards: ``r_t = -kl_coef * kl_t``, plus ``scores[b]`` at the last real token of row b.

    The last real token is ``mask.sum(1) - 1``; every row needs at least one. Returns
    ``(rewards, non_score_reward)``, both ``(B, T)`` with ``non_score_reward = -kl_coef * kl``
    and zeros on padded positions.
    """
    lengths = mask.long().sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("per_token_rewards: every row needs at least one response token (mask row sums to 0)")
    non_score = _zero_pad(-kl_coef * kl.float(), mask)
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, lengths - 1] += scores.to(rewards.dtype)
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation, backwards over each row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V = 0`` beyond the last real token),
    ``A_t = delta_t + gamma * lam * A_{t+1}``. Returns ``(advantages, returns = advantages + values)``,
    both zero on padded positions. No gradient flows (computed under ``no_grad``).
    """
    with torch.no_grad():
        m = mask.to(torch.float32)
        r = _zero_pad(rewards.float(), mask)
        v = _zero_pad(values.float(), mask)
        advantages = torch.zeros_like(r)
        next_adv = torch.zeros_like(r[:, 0])
        next_value = torch.zeros_like(r[:, 0])
        for t in reversed(range(r.shape[1])):
            delta = r[:, t] + gamma * next_value - v[:, t]
            next_adv = (delta + gamma * lam * next_adv) * m[:, t]
            advantages[:, t] = next_adv
            next_value = v[:, t]
        return advantages, advantages + v


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate: ``masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``.

    ``ratio = exp(logp - logp_old)``. Stats (detached 0-dim tensors, no device sync):
    ``clip_fraction`` (share of tokens where the clipped term is the larger, i.e. no gradient),
    ``approx_kl`` (``masked_mean(0.5 * logratio^2)``), ``ratio_mean``, ``ratio_max``.
    """
    logratio = _zero_pad(logprobs - old_logprobs, mask)
    ratio = torch.exp(logratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * logratio.square(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask.bool(), ratio, torch.full_like(ratio, -torch.inf)).max(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2))``.

    Stats (detached): ``vf_clip_fraction``, the share of tokens where the clipped term is the larger.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped = (values - returns).square()
    clipped = (values_clipped - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"vf_clip_fraction": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), steering the measured KL toward ``target``.

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Scale ``value`` by ``1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """``{"value", "target", "horizon"}``; only ``value`` is restored (target/horizon follow the config)."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """Constant KL coefficient with the :class:`AdaptiveKLController` interface (``update`` is a no-op)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """No-op."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` and the count when any value is NaN/inf (syncs the device)."""
    bad = int((~torch.isfinite(tensor)).sum().item())
    if bad:
        raise NonFiniteError(f"non-finite {name}: {bad} of {tensor.numel()} values are NaN/inf")
