"""CTC loss against HF's ``ForCTCLoss`` (torch.nn.functional.ctc_loss) on random logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.loss.loss_ctc import ForCTCLoss

from zoo.nn.ctc import compact_labels, ctc_loss, min_frames_needed

BLANK = 0
ATOL = 1e-5


REDUCTIONS = ("mean", "sum", "none")


def _batch(feasible=True):
    """Logits [6, 16, 7] and labels [6, 6] covering the padding cases; row 5 needs 11 frames."""
    rng = np.random.default_rng(0)
    logits = (2.0 * rng.normal(size=(6, 16, 7))).astype(np.float32)
    labels = np.array([
        [1, 2, 3, 4, 5, 6],             # full
        [3, 1, 4, -100, -100, -100],    # right-padded with -100
        [2, 5, 0, 0, 0, 0],             # right-padded with blank
        [1, -100, 2, 0, 3, -100],       # holes in the middle (-100 and blank)
        [4, 4, 2, 2, 2, -100],          # repeated labels: needs 5 + 3 frames
        [6, 6, 6, 6, 6, 6],             # needs 6 + 5 = 11 frames
    ])
    lengths = np.array([16, 11, 14, 7, 8, 12 if feasible else 9])
    return logits, labels, lengths


def _torch(logits, labels, lengths, reduction, zero_infinity, blank=BLANK, **kwargs):
    x = torch.tensor(logits, requires_grad=True)
    loss = ForCTCLoss(x, torch.tensor(labels), torch.tensor(lengths), blank,
                      reduction=reduction, zero_infinity=zero_infinity, **kwargs)
    if torch.isfinite(loss).all():
        loss.sum().backward()
    return loss.detach().numpy(), (None if x.grad is None else x.grad.numpy())


@jax.jit
def _all_losses(logits, labels, lengths):
    """{(reduction, zero_infinity): (loss, d sum(loss) / d logits)}; one compile for every test batch."""
    out = {}
    for reduction in REDUCTIONS:
        for zero_infinity in (False, True):
            fn = lambda x: ctc_loss(x, labels, lengths, blank_id=BLANK,  # noqa: E731
                                    reduction=reduction, zero_infinity=zero_infinity)
            out[reduction, zero_infinity] = (fn(logits), jax.grad(lambda x: jnp.sum(fn(x)))(logits))
    return out


def _ours(logits, labels, lengths, reduction, zero_infinity):
    loss, grad = _all_losses(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(lengths))[reduction, zero_infinity]
    return np.asarray(loss), np.asarray(grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_matches_torch(reduction, zero_infinity):
    batch = _batch()
    expected, expected_grad = _torch(*batch, reduction, zero_infinity)
    loss, grad = _ours(*batch, reduction, zero_infinity)
    # Rows lose 15-32 nats (sum ~140); float32 recursions over 16 frames agree to <= 2e-6 on losses and
    # <= 5e-6 on gradients, so an absolute 1e-5 suffices here (no relative tolerance needed).
    np.testing.assert_allclose(loss, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(grad, expected_grad, atol=ATOL, rtol=0)


def test_infeasible_row():
    batch = _batch(feasible=False)
    loss, _ = _ours(*batch, "none", False)
    expected, _ = _torch(*batch, "none", False)
    assert np.isposinf(loss[5]) and np.isposinf(expected[5])
    np.testing.assert_allclose(loss[:5], expected[:5], atol=ATOL, rtol=0)
    for reduction in ("mean", "sum"):
        assert np.isposinf(_ours(*batch, reduction, False)[0])
    for reduction in REDUCTIONS:
        loss, grad = _ours(*batch, reduction, True)
        expected, expected_grad = _torch(*batch, reduction, True)
        np.testing.assert_allclose(loss, expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(grad, expected_grad, atol=ATOL, rtol=0)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        assert np.all(grad[5] == 0)
    assert _ours(*batch, "none", True)[0][5] == 0


def test_exactly_feasible_row_is_finite():
    """Row 4 needs exactly its 8 frames; one fewer makes it infeasible, as in torch."""
    logits, labels, lengths = _batch()
    for frames in (8, 7):
        lens = lengths.copy()
        lens[4] = frames
        loss, _ = _ours(logits, labels, lens, "none", False)
        expected, _ = _torch(logits, labels, lens, "none", False)
        assert np.isfinite(loss[4]) == np.isfinite(expected[4]) == (frames == 8)
        np.testing.assert_allclose(loss, expected, atol=ATOL, rtol=0)


def test_padded_frames_do_not_matter():
    logits, labels, lengths = _batch()
    noisy = logits.copy()
    for row, length in enumerate(lengths):
        noisy[row, length:] = 50.0
    np.testing.assert_allclose(_ours(noisy, labels, lengths, "none", True)[0],
                               _ours(logits, labels, lengths, "none", True)[0], atol=1e-6)
    grad = _ours(noisy, labels, lengths, "sum", True)[1]
    for row, length in enumerate(lengths):
        assert np.all(grad[row, length:] == 0)


def test_empty_target_and_low_precision_logits():
    """bf16 logits, log-softmax in float32; a row with no target (mean divides by max(0, 1))."""
    logits, labels, lengths = _batch()
    labels = labels.copy()
    labels[1] = -100
    half = jnp.asarray(logits, jnp.bfloat16)
    as_f32 = np.asarray(half.astype(jnp.float32))
    run = jax.jit(lambda x, y, n: (ctc_loss(x, y, n, blank_id=BLANK, reduction="none"),
                                   ctc_loss(x, y, n, blank_id=BLANK)))
    losses, mean = run(half, jnp.asarray(labels), jnp.asarray(lengths))
    assert losses.dtype == mean.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(losses), _torch(as_f32, labels, lengths, "none", False)[0],
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(mean), _torch(as_f32, labels, lengths, "mean", False)[0],
                               atol=ATOL, rtol=0)


def test_other_blank_id_and_ignore_index():
    logits, labels, lengths = _batch()
    labels = np.where(labels == 0, 6, np.where(labels == 6, 0, labels))  # blank is now 6
    labels = np.where(labels == -100, -1, labels)
    expected, expected_grad = _torch(logits, labels, lengths, "mean", False, blank=6, ignore_index=-1)
    fn = jax.jit(ctc_loss, static_argnames=("blank_id", "reduction", "zero_infinity", "ignore_index"))
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(lengths),
                                        blank_id=6, ignore_index=-1)
    np.testing.assert_allclose(np.asarray(loss), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, atol=ATOL, rtol=0)


def test_helpers_and_errors():
    labels = jnp.array([[1, -100, 2, 0, 2, 2], [3, 3, -100, -100, -100, -100]])
    keep = (labels != -100) & (labels != 0)
    compact, lengths = compact_labels(labels, keep, 0)
    np.testing.assert_array_equal(compact, [[1, 2, 2, 2, 0, 0], [3, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [4, 2])
    np.testing.assert_array_equal(min_frames_needed(compact, lengths), [6, 3])
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(jnp.zeros((1, 4, 3)), jnp.ones((1, 2), jnp.int32), jnp.array([4]), blank_id=0, reduction="avg")
    with pytest.raises(ValueError, match="logits"):
        ctc_loss(jnp.zeros((4, 3)), jnp.ones((1, 2), jnp.int32), jnp.array([4]), blank_id=0)
