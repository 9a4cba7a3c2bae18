"""LMUSeq2Seq: parallel teacher forcing == step-form decoding, greedy, beam search, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from plmu.models import seq2seq
from plmu.models.seq2seq import BANNED_TOKENS, LMUSeq2Seq, reverse_padded

EOS = 3


def test_exported_from_plmu_models():
    from plmu.models import LMUSeq2Seq as Exported

    assert Exported is LMUSeq2Seq


def make_model(seed: int = 0, tgt_vocab: int = 30, **kw) -> LMUSeq2Seq:
    torch.manual_seed(seed)
    kw = {"d_model": 16, "order": 6, "theta": 8.0, "memory_size": 2, **kw}
    return LMUSeq2Seq(25, tgt_vocab, **kw).eval()


def padded_sources(seed: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, 25, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src, torch.tensor(lengths)


def parallel_log_probs(model, src, lengths, prefix: list[int]) -> torch.Tensor:
    """Full-sequence (teacher-forced) log-probabilities for ``<s> prefix``: (len+1, V)."""
    tgt_in = torch.tensor([[2, *prefix]])
    with torch.no_grad():
        logits = model(src, lengths, tgt_in)[0]
    logp = torch.log_softmax(logits.double(), -1)
    logp[:, list(BANNED_TOKENS)] = float("-inf")
    return logp


def test_reverse_padded_is_an_involution_that_keeps_padding():
    x = torch.arange(12.0).view(2, 6, 1)
    lengths = torch.tensor([4, 6])
    r = reverse_padded(x, lengths)
    assert r[0, :, 0].tolist() == [3, 2, 1, 0, 4, 5]
    assert r[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]
    assert torch.equal(reverse_padded(r, lengths), x)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_ignores_padding(bidirectional):
    model = make_model(bidirectional=bidirectional)
    src, lengths = padded_sources(1, [7, 3, 5])
    enc, mask = model.encode(src, lengths)
    assert mask.tolist()[1] == [True] * 3 + [False] * 4
    for i, n in enumerate(lengths.tolist()):
        alone, _ = model.encode(src[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(enc[i, :n], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_form_greedy_equals_parallel_scoring(seed):
    """Each greedily generated token is the arg-max of the parallel, teacher-forced logits."""
    model = make_model(seed)
    src, lengths = padded_sources(seed, [9, 4, 6, 1])
    hyps = model.greedy(src, lengths, max_len=15)
    assert any(len(h) > 3 for h in hyps)
    for i, hyp in enumerate(hyps):
        n = int(lengths[i])
        logp = parallel_log_probs(model, src[i : i + 1, :n], lengths[i : i + 1], hyp)
        predicted = logp.argmax(-1).tolist()
        assert predicted[: len(hyp)] == hyp
        if len(hyp) < 15:  # stopped early: </s> was the arg-max after the last token
            assert predicted[len(hyp)] == EOS


def assert_step_logits_equal_parallel_logits(model, src, lengths, tgt_in) -> None:
    """Teacher forcing ``tgt_in`` through :meth:`decode_step` gives ``forward``'s logits."""
    with torch.no_grad():
        full = model(src, lengths, tgt_in)
        enc, mask = model.encode(src, lengths)
        states = [None] * len(model.decoder)
        steps = []
        for t in range(tgt_in.shape[1]):
            logits, states = model.decode_step(tgt_in[:, t], states, enc, mask)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_step_logits_equal_parallel_logits():
    model = make_model(3)
    src, lengths = padded_sources(3, [6, 6])
    tgt_in = torch.randint(4, 30, (2, 12))
    tgt_in[:, 0] = 2
    assert_step_logits_equal_parallel_logits(model, src, lengths, tgt_in)


class _Halve(torch.nn.Module):
    """A deterministic stand-in for the model's dropout: where it applies shows in the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def test_step_form_applies_dropout_where_forward_does():
    """In training mode the step form drops what ``forward`` drops (embeddings, layer outputs,
    the attentional output), so decoding a model left in training mode is the teacher-forced
    model's, as the decoding docstrings say."""
    model = make_model(5).train()
    model.dropout = _Halve()
    src, lengths = padded_sources(5, [5, 7])
    tgt_in = torch.randint(4, 30, (2, 6))
    tgt_in[:, 0] = 2
    assert_step_logits_equal_parallel_logits(model, src, lengths, tgt_in)


@pytest.mark.parametrize("seed", [0, 4])
def test_beam_size_one_equals_greedy(seed):
    model = make_model(seed)
    src, lengths = padded_sources(seed, [5, 8, 2])
    limit = torch.tensor([4, 12, 7])
    greedy = model.greedy(src, lengths, limit)
    assert model.beam_search(src, lengths, limit, beam_size=1) == greedy
    assert model.beam_search(src, lengths, limit, beam_size=1, length_penalty=0.0) == greedy
    assert [len(h) <= m for h, m in zip(greedy, limit.tolist())] == [True] * 3


@pytest.mark.parametrize("key_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0, 100.0])
def test_wide_beam_finds_the_best_normalised_hypothesis(length_penalty, key_dtype, monkeypatch):
    """With a beam wider than the search space, beam search is exhaustive: compare brute force.

    ``length_penalty=100``: ``3 ** 100`` overflows float32, and the normalised scores of every
    3-token hypothesis became ``-0.0`` (or nan), so beam search returned the empty one. The
    ranking keys are float64, float32 on MPS (``key_dtype``)."""
    monkeypatch.setattr(seq2seq, "_key_dtype", lambda device: key_dtype)
    model = make_model(5, tgt_vocab=6)  # generable: <unk>, </s>, 4, 5
    src, lengths = padded_sources(5, [5])
    max_len = 3
    words = [1, 4, 5]
    hyps = [[*body, EOS] for n in range(max_len) for body in itertools.product(words, repeat=n)]
    hyps += [list(body) for body in itertools.product(words, repeat=max_len)]  # cut at max_len
    tgt_in = torch.tensor([[2, *h[:-1]] + [0] * (max_len - len(h)) for h in hyps])
    with torch.no_grad():
        logits = model(src.expand(len(hyps), -1), lengths.expand(len(hyps)), tgt_in)
    logp = torch.log_softmax(logits.double(), -1)
    scores = [
        sum(logp[i, t, tok].item() for t, tok in enumerate(h)) / len(h) ** length_penalty
        for i, h in enumerate(hyps)
    ]
    best = hyps[max(range(len(hyps)), key=scores.__getitem__)]
    best = [t for t in best if t != EOS]
    found = model.beam_search(src, lengths, max_len, beam_size=64, length_penalty=length_penalty)
    assert found == [best]


@pytest.mark.parametrize("seed", [3, 16, 26])
def test_beam_search_keeps_a_finished_hypothesis_pushed_out_of_the_beam(seed):
    """``</s>`` among the first step's top ``K``: the empty hypothesis is found, and whatever
    beam search returns must score at least as high, even after live hypotheses (whose raw
    log-probabilities only fall) pushed it out of the beam."""
    model = make_model(seed, tgt_vocab=8, tie_embeddings=False)
    with torch.no_grad():  # sharper, more uneven distributions
        model.out.weight.mul_(6.0)
        model.out.bias.normal_(0, 2, generator=torch.Generator().manual_seed(seed))
    src, lengths = padded_sources(seed, [6])
    K, max_len = 4, 12
    first = parallel_log_probs(model, src, lengths, [])[0]
    assert EOS in first.topk(K).indices.tolist()  # the empty hypothesis enters the beam
    found = model.beam_search(src, lengths, max_len, beam_size=K, length_penalty=0.0)[0]
    logp = parallel_log_probs(model, src, lengths, found)
    ending = [EOS] if len(found) < max_len else []
    score = sum(logp[t, tok].item() for t, tok in enumerate(found + ending))
    assert score >= first[EOS].item() - 1e-6


def test_beam_search_batches_independently():
    model = make_model(6)
    src, lengths = padded_sources(6, [7, 3, 5])
    together = model.beam_search(src, lengths, 10, beam_size=3)
    for i, n in enumerate(lengths.tolist()):
        alone = model.beam_search(src[i : i + 1, :n], lengths[i : i + 1], 10, beam_size=3)
        assert alone == [together[i]]


def test_bad_input_is_rejected():
    model = make_model()
    src, lengths = padded_sources(0, [4, 2])
    with pytest.raises(ValueError, match=r"src_lengths must lie in 1\.\.4"):
        model.encode(src, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="src must be"):
        model.encode(src[:, :0], torch.tensor([0, 0]))
    with pytest.raises(TypeError, match="src must hold integer token ids"):
        model.encode(src.float(), lengths)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, lengths, 5, beam_size=0)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="length_penalty must be finite"):
            model.beam_search(src, lengths, 5, beam_size=2, length_penalty=bad)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy(src, lengths, 0)
    with pytest.raises(ValueError, match="d_model"):
        LMUSeq2Seq(10, 10, d_model=0)


@pytest.mark.parametrize("beam_size", [2.5, "3", True, None])
def test_a_beam_size_that_is_not_an_int_is_a_type_error(beam_size):
    """As every integer argument: a float, a str or a bool ``beam_size`` is a TypeError naming
    it (it was a ValueError); a NumPy integer is an int."""
    model = make_model()
    src, lengths = padded_sources(0, [4, 2])
    with pytest.raises(TypeError, match="beam_size must be an int"):
        model.beam_search(src, lengths, 5, beam_size=beam_size)
    assert len(model.beam_search(src, lengths, 5, beam_size=np.int64(2))) == 2


@pytest.mark.parametrize("length_penalty", ["1", True, None])
def test_a_length_penalty_that_is_not_a_number_is_a_type_error(length_penalty):
    """A str used to reach ``math.isfinite`` ("must be real number, not str": no name) and a bool
    passed as 0 or 1."""
    model = make_model()
    src, lengths = padded_sources(0, [4, 2])
    with pytest.raises(TypeError, match="length_penalty must be a number"):
        model.beam_search(src, lengths, 5, beam_size=2, length_penalty=length_penalty)


def test_decode_step_needs_one_state_per_decoder_layer():
    """A states list of the wrong length used to be cut short by ``zip``: with ``[]`` no decoder
    layer ran and the logits were silently wrong."""
    model = make_model(3, decoder_layers=2)
    src, lengths = padded_sources(3, [6, 4])
    enc, mask = model.encode(src, lengths)
    y = torch.tensor([2, 2])
    for states in ([], [None], [None, None, None], None):
        with pytest.raises(ValueError, match="states must be a list of 2"):
            model.decode_step(y, states, enc, mask)
    with pytest.raises(ValueError, match=r"y_prev must have shape \(2,\)"):
        model.decode_step(torch.tensor([2]), [None, None], enc, mask)


def test_decoding_checks_enc_and_mask():
    """``decode_parallel`` and ``decode_step`` take ``enc`` and ``mask`` from the caller: a
    mismatch used to surface as torch's own error from inside the attention."""
    model = make_model(3)
    src, lengths = padded_sources(3, [6, 4])
    enc, mask = model.encode(src, lengths)
    tgt, y, states = torch.tensor([[2, 5, 6]] * 2), torch.tensor([2, 2]), [None, None]
    cases = [
        ((tgt[:1], enc, mask), r"tgt_in must have shape \(2, T\)"),
        ((tgt, enc[0], mask), r"enc must have shape \(batch, S, 16\)"),
        ((tgt, enc[:, :, :5], mask), r"enc must have shape \(batch, S, 16\)"),
        ((tgt, enc, mask[:, :3]), r"mask must have shape \(2, 6\)"),
        ((tgt, enc, mask.float()), "mask must be a bool tensor"),
    ]
    for (t, e, m), match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            model.decode_parallel(t, e, m)
        if t.shape[0] == 2:
            with pytest.raises((ValueError, TypeError), match=match):
                model.decode_step(y, states, e, m)


def test_src_lengths_must_be_integers():
    """Float lengths used to fail deep in ``gather`` (bidirectional) or, unidirectional, to be
    used as they were: 2.5 attended to 3 source positions."""
    for bidirectional in (True, False):
        model = make_model(bidirectional=bidirectional)
        src, lengths = padded_sources(0, [4, 2])
        for bad in (lengths.float(), torch.tensor([4.0, 2.5])):
            with pytest.raises(TypeError, match="src_lengths must hold integers"):
                model.encode(src, bad)
            with pytest.raises(TypeError, match="src_lengths must hold integers"):
                model.greedy(src, bad, 3)
    with pytest.raises(TypeError, match=r"src_lengths must be a torch\.Tensor"):
        model.encode(src, [4, 2])


@pytest.mark.parametrize("bad", [2.7, True, "5", None, torch.tensor([2.5, 3.0])])
def test_max_len_must_be_integers(bad):
    """A fractional ``max_len`` was silently floored, a string or ``True`` taken as a number."""
    model = make_model()
    src, lengths = padded_sources(0, [4, 2])
    with pytest.raises(TypeError, match="max_len must be an int"):
        model.greedy(src, lengths, bad)
    with pytest.raises(TypeError, match="max_len must be an int"):
        model.beam_search(src, lengths, bad, beam_size=2)


@pytest.mark.slow
def test_step_decoding_cost_does_not_grow_with_generated_length():
    """The carried state has a fixed size: the median time of tokens 751-1000 stays within
    1.5x of tokens 11-260 (timing on a shared CPU, hence slow-marked and medians)."""
    import time

    torch.manual_seed(0)
    model = LMUSeq2Seq(1000, 1000, d_model=128, order=64, theta=64.0, memory_size=4).eval()
    src, lengths = padded_sources(0, [30])
    with torch.no_grad():
        enc, mask = model.encode(src, lengths)
        states = [None] * len(model.decoder)
        y, times = torch.tensor([2]), []
        for _ in range(1000):
            start = time.perf_counter()
            logits, states = model.decode_step(y, states, enc, mask)
            y = logits.argmax(-1)
            times.append(time.perf_counter() - start)
    early, late = sorted(times[10:260])[125], sorted(times[750:])[125]
    assert all(s.shape == (1, 4 * 64) for s in states)
    assert late <= 1.5 * early, (early, late)


def test_an_empty_batch_decodes_to_no_hypotheses():
    """A batch of no sources decodes to ``[]`` (``limit.max()`` of nothing raised)."""
    model = make_model()
    src = torch.zeros(0, 5, dtype=torch.long)
    lengths = torch.zeros(0, dtype=torch.long)
    assert model.greedy(src, lengths, 4) == []
    assert model.beam_search(src, lengths, 4, beam_size=3) == []
