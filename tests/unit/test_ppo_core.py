"""PPO math against hand-computed numbers (arithmetic in each docstring)."""

import math

import pytest
import torch

from kuberlhf.models.generation import (
    entropy_from_logits,
    logprobs_from_logits,
    response_logprobs,
    truncate_after_eos,
)
from kuberlhf.rlhf.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    NonFiniteError,
    check_finite,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    value_loss,
)

NAN, INF = float("nan"), float("inf")
LN2, LN1_5 = math.log(2.0), math.log(1.5)


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def approx_list(x, rel=1e-5, abs_=1e-6):
    return pytest.approx(x, rel=rel, abs=abs_)


# ---------------------------------------------------------------- masked statistics

X = [[1.0, 2.0, 3.0, NAN], [4.0, INF, -INF, 100.0]]
M = [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_masked_mean_ignores_padding_even_nan():
    """Masked entries 1, 2, 3 | 4 (padding holds NaN/inf/100 and must not leak).

    all:   (1 + 2 + 3 + 4) / 4 = 2.5
    dim=1: row 0 (1 + 2 + 3) / 3 = 2.0, row 1 4 / 1 = 4.0
    dim=0: col 0 (1 + 4) / 2 = 2.5, cols 1, 2: 2 / 1, 3 / 1; col 3 empty -> 0
    """
    x, m = t(X), t(M)
    assert masked_mean(x, m).item() == pytest.approx(2.5)
    assert masked_mean(x, m, dim=1).tolist() == approx_list([2.0, 4.0])
    assert masked_mean(x, m, dim=0).tolist() == approx_list([2.5, 2.0, 3.0, 0.0])
    assert masked_mean(x, m.long()).item() == pytest.approx(2.5)  # integer / bool masks work too
    assert masked_mean(x, m.bool()).item() == pytest.approx(2.5)


def test_masked_var_biased_and_unbiased():
    """Entries 1, 2, 3, 4; mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5.

    biased = 5 / 4 = 1.25; unbiased = 5 / 3 = 1.6667. One entry cannot give an unbiased variance.
    """
    x, m = t(X), t(M)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(1.25)
    assert masked_var(x, m).item() == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(t([[7.0, 1.0]]), t([[1, 0]]))


def test_masked_whiten_mean_zero_var_one_over_masked_entries():
    """Entries 1, 2, 3, 4: mu = 2.5, unbiased var = 5/3, sd = sqrt(5/3) = 1.290994.

    whitened = (-1.5, -0.5, 0.5, 1.5) / 1.290994 = (-1.161895, -0.387298, 0.387298, 1.161895);
    shift_mean=False adds mu back: (1.338105, 2.112702, 2.887298, 3.661895). Padding -> 0.
    """
    x, m = t(X), t(M)
    w = masked_whiten(x, m)
    assert w[0].tolist() == approx_list([-1.161895, -0.387298, 0.387298, 0.0])
    assert w[1].tolist() == approx_list([1.161895, 0.0, 0.0, 0.0])
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, m).item() == pytest.approx(1.0, rel=1e-5)
    s = masked_whiten(x, m, shift_mean=False)
    assert s[0].tolist() == approx_list([1.338105, 2.112702, 2.887298, 0.0])
    assert s[1].tolist() == approx_list([3.661895, 0.0, 0.0, 0.0])
    assert masked_mean(s, m).item() == pytest.approx(2.5)
    assert masked_var(s, m).item() == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- logits

def test_logprobs_from_logits_gathers_log_softmax():
    """logits = log(1, 2, 1) + 10 -> softmax (0.25, 0.5, 0.25) (the shift cancels).

    position 0, label 1: log 0.5 = -0.693147; position 1, label 0: log 0.25 = -1.386294.
    Row 2 logits (0, 0, -inf): softmax (0.5, 0.5, 0); label 0 -> log 0.5; label 2 -> -inf.
    """
    row = [math.log(1.0) + 10, math.log(2.0) + 10, math.log(1.0) + 10]
    logits = t([[row, row], [[0.0, 0.0, -INF], [0.0, 0.0, -INF]]])
    labels = torch.tensor([[1, 0], [0, 2]])
    lp = logprobs_from_logits(logits, labels)
    assert lp.shape == (2, 2)
    assert lp[0].tolist() == approx_list([-LN2, -2 * LN2])
    assert lp[1, 0].item() == pytest.approx(-LN2)
    assert lp[1, 1].item() == -INF
    # bf16 input is upcast: same answer to bf16 input precision
    lp16 = logprobs_from_logits(logits[:1].bfloat16(), labels[:1])
    assert lp16.dtype == torch.float32
    assert lp16[0].tolist() == approx_list([-LN2, -2 * LN2], rel=2e-2)


def test_entropy_from_logits():
    """H(0.25, 0.5, 0.25) = -(2 * 0.25 * log 0.25 + 0.5 * log 0.5) = ln 2 + 0.5 ln 2 = 1.5 ln 2 = 1.039721.

    Uniform over 4: ln 4 = 1.386294. (0, 0, -inf, -inf): two live tokens -> ln 2, finite, finite gradient.
    A one-hot-ish distribution (logits 0 vs -100) has entropy ~ 0.
    """
    logits = t([
        [math.log(1.0), math.log(2.0), math.log(1.0), -INF],
        [5.0, 5.0, 5.0, 5.0],
        [0.0, 0.0, -INF, -INF],
        [0.0, -100.0, -100.0, -100.0],
    ]).requires_grad_(True)
    h = entropy_from_logits(logits)
    assert h.tolist() == approx_list([1.5 * LN2, 2 * LN2, LN2, 0.0], abs_=1e-5)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_response_logprobs_from_the_response_positions_only():
    """A row of T = 5 tokens whose response starts at 3: tokens 3 (id 1) and 4 (id 0) are scored by the logits at
    positions 2 and 3. Given all five positions' logits or only the last T - start + 1 = 3 (logits_to_keep), the
    same log-probs: logits (0, ln 3) at position 2 give id 1 log(3/4) = -0.287682, logits (0, 0) at position 3
    give id 0 log(1/2) = -0.693147; entropies -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335 and ln 2. The prompt's
    positions and the last one are never read (NaN there). Without entropy asked, None."""
    ids = torch.tensor([[0, 0, 0, 1, 0]])
    logits = torch.full((1, 5, 2), float("nan"))  # the prompt's positions are never read
    logits[0, 2] = t([0.0, math.log(3.0)])
    logits[0, 3] = t([0.0, 0.0])
    full, h = response_logprobs(logits, ids, start=3)
    kept, none = response_logprobs(logits[:, -3:], ids, start=3, entropy=False)
    assert full[0].tolist() == approx_list([math.log(0.75), -LN2])
    assert kept[0].tolist() == full[0].tolist() and none is None
    assert h[0].tolist() == approx_list([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), LN2])


# ---------------------------------------------------------------- KL

def test_kl_estimators_per_token_values():
    """d = logp - logp_ref = (ln 2, -ln 2, 0); r = exp(-d) = (0.5, 2, 1).

    k1 = d = (0.693147, -0.693147, 0)
    k2 = d^2 / 2 = (0.240227, 0.240227, 0)
    k3 = (r - 1) - log r = (-0.5 + ln 2, 1 - ln 2, 0) = (0.193147, 0.306853, 0)
    """
    logp = t([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    ref = t([[math.log(0.25), math.log(0.5), math.log(0.25)]])
    assert kl_estimate(logp, ref).tolist()[0] == approx_list([LN2, -LN2, 0.0])
    assert kl_estimate(logp, ref, "k1").tolist()[0] == approx_list([LN2, -LN2, 0.0])
    assert kl_estimate(logp, ref, "k2").tolist()[0] == approx_list([0.5 * LN2**2, 0.5 * LN2**2, 0.0])
    assert kl_estimate(logp, ref, "k3").tolist()[0] == approx_list([LN2 - 0.5, 1 - LN2, 0.0])


def test_kl_estimators_expectation_under_policy():
    """p = (0.5, 0.25, 0.25), ref = (0.25, 0.5, 0.25); true KL(p || ref) = 0.5 ln 2 - 0.25 ln 2 = 0.25 ln 2 = 0.173287.

    E_p[k1] = 0.5 ln 2 - 0.25 ln 2 + 0 = 0.173287 (unbiased and >= 0 though one token is negative)
    E_p[k3] = 0.5 (ln 2 - 0.5) + 0.25 (1 - ln 2) = 0.25 ln 2 = 0.173287 (unbiased, every token >= 0)
    E_p[k2] = 0.75 * 0.5 ln^2 2 = 0.180170 (biased)
    """
    p = t([0.5, 0.25, 0.25])
    logp, ref = p.log()[None], t([[0.25, 0.5, 0.25]]).log()
    true_kl = 0.25 * LN2
    k1, k2, k3 = (kl_estimate(logp, ref, k)[0] for k in ("k1", "k2", "k3"))
    assert (k1 < 0).any()
    assert (p * k1).sum().item() == pytest.approx(true_kl)
    assert (p * k3).sum().item() == pytest.approx(true_kl)
    assert (p * k2).sum().item() == pytest.approx(0.75 * 0.5 * LN2**2)
    # k3 >= 0 for any pair of log-probs, including large gaps (expm1 keeps it exact near 0)
    a, b = torch.linspace(-20, 0, 41), torch.linspace(0, -20, 41)
    assert (kl_estimate(a, b, "k3") >= 0).all()
    assert (kl_estimate(a, a + 1e-4, "k3") >= 0).all()
    assert kl_estimate(t([0.0]), t([-1e-3]), "k3").item() == pytest.approx(1e-3**2 / 2, rel=1e-2)


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'k4'"):
        kl_estimate(t([0.0]), t([0.0]), "k4")


# ---------------------------------------------------------------- rewards, GAE

def test_per_token_rewards_score_at_last_real_token():
    """kl_coef = 0.1; row 0 has 3 real tokens, row 1 has 1; padding kl is garbage (NaN/inf).

    non_score = -0.1 * kl: row 0 (-0.1 * 1, -0.1 * -2, -0.1 * 0.5, 0) = (-0.1, 0.2, -0.05, 0)
                           row 1 (-0.1 * 3, 0, 0, 0)             = (-0.3, 0, 0, 0)
    scores (2.0, -1.0) land at index mask.sum(1) - 1 = 2 and 0:
    rewards: row 0 (-0.1, 0.2, -0.05 + 2.0, 0) = (-0.1, 0.2, 1.95, 0); row 1 (-0.3 - 1.0, 0, 0, 0) = (-1.3, 0, 0, 0)
    """
    kl = t([[1.0, -2.0, 0.5, NAN], [3.0, INF, 7.0, 7.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    rewards, non_score = per_token_rewards(t([2.0, -1.0]), kl, 0.1, mask)
    assert non_score.tolist()[0] == approx_list([-0.1, 0.2, -0.05, 0.0])
    assert non_score.tolist()[1] == approx_list([-0.3, 0.0, 0.0, 0.0])
    assert rewards.tolist()[0] == approx_list([-0.1, 0.2, 1.95, 0.0])
    assert rewards.tolist()[1] == approx_list([-1.3, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least one response token"):
        per_token_rewards(t([1.0]), t([[0.0, 0.0]]), 0.1, t([[0, 0]]))


def test_gae_hand_computed_with_padding():
    """gamma = 0.9, lam = 0.95 (gamma * lam = 0.855); 3 real tokens, 4th padded (garbage r = 5, V = 9).

    r = (0.1, -0.2, 1.0), V = (0.5, 0.4, 0.3), V beyond the last real token = 0:
    delta_2 = 1.0 + 0.9 * 0   - 0.3 =  0.7
    delta_1 = -0.2 + 0.9 * 0.3 - 0.4 = -0.33
    delta_0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04
    A_2 = 0.7
    A_1 = -0.33 + 0.855 * 0.7    = 0.2685
    A_0 = -0.04 + 0.855 * 0.2685 = 0.1895675
    returns = A + V = (0.6895675, 0.6685, 1.0), padded position 0.
    """
    rewards = t([[0.1, -0.2, 1.0, 5.0]])
    values = t([[0.5, 0.4, 0.3, 9.0]])
    mask = t([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    assert adv.tolist()[0] == approx_list([0.1895675, 0.2685, 0.7, 0.0])
    assert ret.tolist()[0] == approx_list([0.6895675, 0.6685, 1.0, 0.0])


def test_gae_rows_independent_and_monte_carlo_limit():
    """gamma = lam = 1: A_t = sum_{k >= t} r_k - V_t (reward-to-go minus value), returns = reward-to-go.

    row 0 (full, 3 tokens): r = (1, 2, 3), V = (0.5, 0.5, 0.5): rtg = (6, 5, 3), A = (5.5, 4.5, 2.5)
    row 1 (1 token, then padding r = 100, V = 100): rtg = (4), A = 4 - 1 = 3; padding 0
    """
    rewards = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    values = t([[0.5, 0.5, 0.5], [1.0, 100.0, 100.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [approx_list([5.5, 4.5, 2.5]), approx_list([3.0, 0.0, 0.0])]
    assert ret.tolist() == [approx_list([6.0, 5.0, 3.0]), approx_list([4.0, 0.0, 0.0])]


def test_gae_lam_zero_is_one_step_td():
    """lam = 0: A_t = delta_t. gamma = 0.5, r = (1, 1), V = (2, 4):
    delta_1 = 1 + 0.5 * 0 - 4 = -3; delta_0 = 1 + 0.5 * 4 - 2 = 1. returns = (3, 1).
    """
    adv, ret = gae(t([[1.0, 1.0]]), t([[2.0, 4.0]]), t([[1, 1]]), gamma=0.5, lam=0.0)
    assert adv.tolist()[0] == approx_list([1.0, -3.0])
    assert ret.tolist()[0] == approx_list([3.0, 1.0])


# ---------------------------------------------------------------- losses

def test_policy_loss_clipping_values_stats_and_gradients():
    """eps = 0.2, range [0.8, 1.2]; 4 real tokens, 5th padded (logp = 100 -> ratio e^100 if it leaked).

    t0: ratio 1.5, A = +1: -A r = -1.5, -A clip = -1.2 -> max -1.2  (clipped, grad 0)
    t1: ratio 0.5, A = +2: -A r = -1.0, -A clip = -1.6 -> max -1.0  (unclipped)
    t2: ratio 1.0, A = -1: 1.0, 1.0                    -> max  1.0  (unclipped)
    t3: ratio 0.5, A = -1: -A r = 0.5, -A clip = 0.8  -> max  0.8  (clipped, grad 0)
    loss = (-1.2 - 1.0 + 1.0 + 0.8) / 4 = -0.1;  clip_fraction = 2 / 4 = 0.5
    approx_kl = 0.5 * (ln^2 1.5 + ln^2 0.5 + 0 + ln^2 0.5) / 4 = 0.5 * (0.164402 + 2 * 0.480453) / 4 = 0.140664
    ratio_mean = (1.5 + 0.5 + 1 + 0.5) / 4 = 0.875; ratio_max = 1.5
    d loss / d logp_t = -A_t * ratio_t / 4 where unclipped: t1 -2 * 0.5 / 4 = -0.25, t2 +1 * 1 / 4 = 0.25; else 0
    """
    old = t([[0.0, 0.0, 0.0, 0.0, 0.0]])
    logp = t([[LN1_5, -LN2, 0.0, -LN2, 100.0]]).requires_grad_(True)
    adv = t([[1.0, 2.0, -1.0, -1.0, 7.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.1)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (LN1_5**2 + 2 * LN2**2) / 4)
    assert stats["approx_kl"].item() == pytest.approx(0.140664, rel=1e-5)
    assert stats["ratio_mean"].item() == pytest.approx(0.875)
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert not any(v.requires_grad for v in stats.values())
    loss.backward()
    assert logp.grad.tolist()[0] == approx_list([0.0, -0.25, 0.25, 0.0, 0.0])


def test_policy_loss_on_policy_is_minus_mean_advantage():
    """ratio = 1 everywhere (logp == old): loss = -mean(A) over masked = -(3 - 1) / 2 = -1; nothing clipped.
    Gradient d/dlogp_t = -A_t / 2 = (-1.5, 0.5, 0).
    """
    logp = t([[-1.0, -2.0, -3.0]]).requires_grad_(True)
    loss, stats = policy_loss(logp, logp.detach().clone(), t([[3.0, -1.0, 50.0]]), t([[1, 1, 0]]), 0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    loss.backward()
    assert logp.grad.tolist()[0] == approx_list([-1.5, 0.5, 0.0])


def test_value_loss_clipping():
    """eps = 0.2; 3 real tokens, 4th padded (garbage V = 1e6).

    t0: V 1.0, V_old 0.5, R 2.0: clip(V) = 0.7; (V-R)^2 = 1.0, (0.7-R)^2 = 1.69 -> 1.69 (clipped, grad 0)
    t1: V 1.0, V_old 0.5, R 0.0: clip(V) = 0.7; 1.0 vs 0.49 -> 1.0 (unclipped)
    t2: V 0.1, V_old 0.0, R 1.0: inside range; 0.81 vs 0.81 -> 0.81
    loss = 0.5 * (1.69 + 1.0 + 0.81) / 3 = 0.583333; vf_clip_fraction = 1 / 3
    d loss / d V_t = 0.5 * 2 (V_t - R_t) / 3 where unclipped: t1 1/3, t2 -0.9/3 = -0.3; t0, t3: 0
    """
    values = t([[1.0, 1.0, 0.1, 1e6]]).requires_grad_(True)
    old = t([[0.5, 0.5, 0.0, 0.0]])
    returns = t([[2.0, 0.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, t([[1, 1, 1, 0]]), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 3.5 / 3)
    assert stats["vf_clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert values.grad.tolist()[0] == approx_list([0.0, 1 / 3, -0.3, 0.0])


# ---------------------------------------------------------------- KL controllers

def test_adaptive_kl_controller_updates_and_clip():
    """init 0.2, target 6, horizon 10000.

    kl 9.0, n 1000: e = 9/6 - 1 = 0.5 -> clip 0.2;  mult 1 + 0.2 * 0.1 = 1.02;   value 0.2 * 1.02 = 0.204
    kl 6.6, n  500: e = 0.1;                         mult 1 + 0.1 * 0.05 = 1.005; value 0.204 * 1.005 = 0.20502
    kl 0.0, n 2000: e = -1 -> clip -0.2;             mult 1 - 0.2 * 0.2 = 0.96;   value 0.20502 * 0.96 = 0.1968192
    kl 5.4, n 1000: e = -0.1;                        mult 1 - 0.1 * 0.1 = 0.99;   value 0.1968192 * 0.99 = 0.194851008
    """
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    expected = [0.204, 0.20502, 0.1968192, 0.194851008]
    for (kl, n), want in zip([(9.0, 1000), (torch.tensor(6.6), 500), (0.0, 2000), (5.4, 1000)], expected, strict=True):
        ctl.update(kl, n)
        assert ctl.value == pytest.approx(want, rel=1e-9)
        assert isinstance(ctl.value, float)


def test_adaptive_kl_controller_state_dict_round_trip():
    """After one clipped step (0.5 * 1.02 = 0.51) a fresh controller loading the state continues identically:
    next step kl 12, target 6: e = 1 -> 0.2, mult 1 + 0.2 * 100/1000 = 1.02 -> 0.51 * 1.02 = 0.5202.
    """
    a = AdaptiveKLController(0.5, target=6.0, horizon=1000)
    a.update(100.0, 100)
    state = a.state_dict()
    assert state["value"] == pytest.approx(0.51)
    b = AdaptiveKLController(0.5, target=6.0, horizon=1000)
    b.load_state_dict(state)
    assert b.value == pytest.approx(0.51)
    a.update(12.0, 100)
    b.update(12.0, 100)
    assert a.value == b.value == pytest.approx(0.5202)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(1000.0, 10_000)
    assert ctl.value == 0.05
    other = FixedKLController(0.1)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


# ---------------------------------------------------------------- EOS, finiteness

def test_truncate_after_eos():
    """eos = 2, pad = 0.
    row 0: 5 7 2 9 2 -> first EOS at 2: tokens 5 7 2 0 0, mask 1 1 1 0 0, has_eos
    row 1: 5 6 7 8 9 -> no EOS: unchanged, mask all 1, not has_eos
    row 2: 2 4 4 4 4 -> EOS first: 2 0 0 0 0, mask 1 0 0 0 0, has_eos
    """
    tokens = torch.tensor([[5, 7, 2, 9, 2], [5, 6, 7, 8, 9], [2, 4, 4, 4, 4]])
    out, mask, has_eos = truncate_after_eos(tokens, eos_token_id=2, pad_token_id=0)
    assert out.tolist() == [[5, 7, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]
    assert has_eos.dtype == torch.bool
    assert tokens[0].tolist() == [5, 7, 2, 9, 2]  # input not modified


def test_truncate_after_eos_pad_equals_eos():
    """pad == eos (GPT-2 style): 5 2 2 2 -> tokens unchanged, mask 1 1 0 0 (only the first EOS kept)."""
    out, mask, has_eos = truncate_after_eos(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), 2, 2)
    assert out.tolist() == [[5, 2, 2, 2], [5, 6, 7, 8]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False]


def test_check_finite():
    """64 values with one NaN and one inf -> 'non-finite reward: 2 of 64 values are NaN/inf'."""
    x = torch.zeros(8, 8)
    check_finite("reward", x)  # finite: no error
    x[1, 2], x[5, 7] = NAN, -INF
    with pytest.raises(NonFiniteError, match=r"^non-finite reward: 2 of 64 values are NaN/inf$"):
        check_finite("reward", x)
    with pytest.raises(ValueError, match="non-finite loss: 1 of 1 values"):
        check_finite("loss", torch.tensor(INF))
