"""Metrics by hand, target tokenisation, and batched inference against plain forwards and HF generate."""
from __future__ import annotations

import math

import pytest
import torch

from minedit.data import EditRequest, LocalityPrompt
from minedit.infer import Pair, continuation_logits, encode_pair, generate_greedy, left_pad, pad_id, predict_tokens, right_pad
from minedit.metrics import (METRICS, exact_match, nanmean, normalize_answer, reference_predictions, score_requests,
                             summarize, token_accuracy)

# --- pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, target, expected", [
    ([5, 6, 7, 8], [5, 6, 7, 8], 1.0),
    ([5, 6, 0, 8], [5, 6, 7, 8], 0.75),
    ([1, 2, 3], [4, 5, 6], 0.0),
    ([9], [9], 1.0),
    ([3, 9], (3, 4), 0.5),
])
def test_token_accuracy(pred, target, expected):
    assert token_accuracy(torch.tensor(pred), target) == expected


def test_token_accuracy_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        token_accuracy(torch.tensor([1, 2]), [1, 2, 3])


@pytest.mark.parametrize("text, expected", [
    ("  The  Eiffel-Tower!  ", "eiffel tower"),
    ("An apple, a day.", "apple day"),
    ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
    ("J. R. R. Tolkien", "j r r tolkien"),
    ("PARIS\n\tFrance", "paris france"),
    ("", ""),
    ("the", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("generated, target, expected", [
    (" Paris", "Paris", True),
    (" Paris. It is", "Paris", True),
    (" Parisian cafes", "Paris", False),  # whole words only
    (" paris", "PARIS", True),
    ("PARIS!", "Paris", True),
    (" the Netherlands is", "The Netherlands", True),
    (" J.R.R. Tolkien wrote", "J. R. R. Tolkien", True),
    (" New York", "New York City", False),  # the whole target must be there
    (" Lyon", "Paris", False),
    (" It is Paris", "Paris", False),  # must start with the target
    ("", "Paris", False),
    (" anything", "the", False),  # a target that normalises to nothing never matches
])
def test_exact_match(generated, target, expected):
    assert exact_match(generated, target) is expected


@pytest.mark.parametrize("values, expected", [
    ([1.0, math.nan, 3.0], 2.0),
    ([0.5], 0.5),
    ([0.0, 1.0, 1.0, 0.0], 0.5),
])
def test_nanmean(values, expected):
    assert nanmean(values) == expected


@pytest.mark.parametrize("values", [[], [math.nan], [math.nan, math.nan]])
def test_nanmean_of_nothing_is_nan(values):
    assert math.isnan(nanmean(values))


def test_summarize_ignores_nan():
    rows = [dict(rel=1.0, gen=0.0, loc=1.0, rel_em=math.nan, gen_em=1.0),
            dict(rel=0.5, gen=math.nan, loc=0.0, rel_em=math.nan, gen_em=0.0)]
    out = summarize(rows)
    assert list(out) == list(METRICS) == ["rel", "gen", "loc", "rel_em", "gen_em"]
    assert out["rel"] == 0.75 and out["gen"] == 0.0 and out["loc"] == 0.5 and out["gen_em"] == 0.5
    assert math.isnan(out["rel_em"])


def test_left_and_right_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = right_pad([[1, 2, 3], [4]], pad=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# --- target tokenisation -------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, target", [
    ("The capital of France is", "Paris"),
    ("The currency of Japan is the", "yen"),
    ("Who wrote The Hobbit?", "J. R. R. Tolkien"),
    ("What is the currency of Sweden?", "Swedish krona"),
])
def test_encode_pair_keeps_the_leading_space(smol_tokenizer, prompt, target):
    tok = smol_tokenizer
    pair = encode_pair(tok, prompt, target)
    prompt_ids = tok(prompt).input_ids
    full = tok(prompt + " " + target).input_ids
    assert pair.prompt_ids == tuple(prompt_ids)
    assert pair.prompt_ids + pair.target_ids == tuple(full)
    assert pair.target_ids == tuple(full[len(prompt_ids):])
    assert list(pair.target_ids) != tok(target, add_special_tokens=False).input_ids  # no-space ids are other tokens
    assert tok.decode(list(pair.target_ids)) == " " + target


def test_encode_pair_adds_no_second_space(smol_tokenizer):
    tok = smol_tokenizer
    assert encode_pair(tok, "The capital of France is", " Paris") == encode_pair(tok, "The capital of France is", "Paris")
    question = encode_pair(tok, "Q: capital of France?\n", "Paris")
    assert tok.decode(list(question.target_ids)) == "Paris"


def test_encode_pair_rejects_empty_target(smol_tokenizer):
    with pytest.raises(ValueError, match="tokenises to nothing"):
        encode_pair(smol_tokenizer, "The capital of France is ", "")


# --- batched inference equals plain forwards ------------------------------------------------------

PARITY_CASES = [
    ("The capital of France is", "Paris"),
    ("A", "very long answer that spans quite a few tokens indeed"),
    ("The chemical symbol of gold in the periodic table of the elements is", "Au"),
    ("Say hello to my", "dear old friend"),
]


@pytest.mark.parametrize("which", ["tiny_llama", "smol"])
def test_continuation_logits_equal_plain_forward(request, which):
    model, tok = request.getfixturevalue(which)
    pairs = [encode_pair(tok, p, t) for p, t in PARITY_CASES]
    assert len({len(p.prompt_ids) for p in pairs}) == len(pairs) and len({len(p.target_ids) for p in pairs}) >= 3
    with torch.no_grad():
        logits, mask = continuation_logits(model, pairs, pad_id(tok))
        longest = max(len(p.target_ids) for p in pairs)
        assert logits.shape == (len(pairs), longest, model.config.vocab_size)
        assert mask.tolist() == [[j < len(p.target_ids) for j in range(longest)] for p in pairs]
        for row, pair in enumerate(pairs):
            full = torch.tensor([pair.prompt_ids + pair.target_ids])
            plain = model(input_ids=full).logits[0, len(pair.prompt_ids) - 1: -1]
            n = len(pair.target_ids)
            assert torch.allclose(logits[row, :n], plain, atol=1e-4), (row, (logits[row, :n] - plain).abs().max())


def test_predict_tokens_keeps_input_order_across_batches(tiny_llama):
    model, tok = tiny_llama
    pairs = [encode_pair(tok, p, t) for p, t in PARITY_CASES]
    preds = predict_tokens(model, pairs, pad_id(tok), batch_size=3)  # sorted by length inside, two batches
    assert [len(p) for p in preds] == [len(p.target_ids) for p in pairs]
    with torch.no_grad():
        for pred, pair in zip(preds, pairs):
            plain = model(input_ids=torch.tensor([pair.prompt_ids + pair.target_ids])).logits[0, len(pair.prompt_ids) - 1: -1]
            assert pred.tolist() == plain.argmax(-1).tolist()


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=model.generation_config.pad_token_id)
    return out[0, len(ids):].tolist()


def test_generate_greedy_equals_hf_generate_single_prompt(smol):
    model, tok = smol
    ids = tok("The official language of Germany is").input_ids
    ours = generate_greedy(model, [ids], [6], pad_id(tok))
    reference = _hf_greedy(model, ids, 6)
    assert len(reference) == 6  # no end of sequence on the way, so HF ran all 6 steps
    assert ours == [reference]


def test_generate_greedy_stops_where_hf_generate_stops(smol):
    model, tok = smol
    ids = tok("The Eiffel Tower is located in the city of").input_ids
    reference = _hf_greedy(model, ids, 8)
    assert len(reference) < 8 and reference[-1] == tok.eos_token_id  # the premise: HF greedy ends early here
    assert generate_greedy(model, [ids], [8], pad_id(tok)) == [reference]


def test_generate_greedy_batch_matches_single_prompts(smol):
    model, tok = smol
    prompts = ["The capital of France is", "The chemical symbol of gold is", "Tokyo is the capital city of the country named"]
    ids = [tok(p).input_ids for p in prompts]
    steps = [4, 2, 3]
    ours = generate_greedy(model, ids, steps, pad_id(tok), batch_size=2)
    assert [len(o) for o in ours] == steps
    assert ours == [_hf_greedy(model, i, n) for i, n in zip(ids, steps)]


# --- scoring on the real, unedited model ---------------------------------------------------------


@pytest.fixture(scope="module")
def scored(smol):
    model, tok = smol
    requests = [
        EditRequest("The capital of France is", "Paris", rephrases=("France's capital city is",),
                    locality=(LocalityPrompt("The chemical symbol of gold is", "Au"),)),
        # greedy continues " y" with "en": token accuracy 1.0 for "y", but "yen" is not "y" as a word
        EditRequest("The currency of Japan is the", "y",
                    locality=(LocalityPrompt("Tokyo is in", "Japan"), LocalityPrompt("The official language of Germany is", "German"))),
        EditRequest("The currency of Japan is the", "yen", rephrases=("Japan pays in", "In Japan, money is counted in")),
        EditRequest("The official language of Germany is", "German", locality=(LocalityPrompt("Paris is the capital of", "France"),)),
        EditRequest("What is the capital of Bosnia and Herzegovina?", "Moscow",
                    locality=(LocalityPrompt("nq question: who wrote the hobbit", "J. R. R. Tolkien"),)),
    ]
    reference = reference_predictions(model, tok, requests)
    return requests, reference, score_requests(model, tok, requests, reference, batch_size=4)


def test_score_requests_unedited_locality_is_one(scored):
    requests, reference, rows = scored
    assert len(rows) == len(requests)
    for request, refs, row in zip(requests, reference, rows):
        assert set(row) == set(METRICS)
        assert len(refs) == len(request.locality)
        if request.locality:
            assert row["loc"] == 1.0
        else:
            assert math.isnan(row["loc"])
        assert math.isnan(row["gen"]) == (not request.rephrases) and math.isnan(row["gen_em"]) == (not request.rephrases)
        assert all(0.0 <= row[k] <= 1.0 for k in ("rel", "rel_em"))


def test_score_requests_exact_match_follows_greedy_generation(smol, scored):
    """rel_em is exact match of the greedy continuation (target length + 2 tokens); when rel == 1.0 that
    continuation starts with the target tokens, so rel_em is 1 unless the next tokens continue the word."""
    model, tok = smol
    requests, _, rows = scored
    for request, row in zip(requests, rows):
        pair = encode_pair(tok, request.prompt, request.target)
        greedy = _hf_greedy(model, list(pair.prompt_ids), len(pair.target_ids) + 2)
        text = tok.decode(greedy, skip_special_tokens=True)
        assert row["rel_em"] == float(exact_match(text, request.target)), (request, text)
        if row["rel"] == 1.0:
            assert tuple(greedy[: len(pair.target_ids)]) == pair.target_ids
            assert normalize_answer(text).startswith(normalize_answer(request.target))
    by_target = {r.target: row for r, row in zip(requests, rows)}
    assert by_target["Paris"]["rel"] == 1.0 and by_target["Paris"]["rel_em"] == 1.0
    assert by_target["y"]["rel"] == 1.0 and by_target["y"]["rel_em"] == 0.0  # " y" + "en...": the word goes on
    assert by_target["yen"]["rel"] == 1.0 and by_target["yen"]["rel_em"] == 1.0
    assert by_target["Moscow"]["rel"] < 1.0 and by_target["Moscow"]["rel_em"] == 0.0


def test_score_requests_without_reference_or_exact(smol, scored):
    model, tok = smol
    requests, _, rows = scored
    plain = score_requests(model, tok, requests[:2], reference=None, exact=False)
    for row, full in zip(plain, rows):
        assert math.isnan(row["loc"]) and math.isnan(row["rel_em"]) and math.isnan(row["gen_em"])
        assert row["rel"] == full["rel"]
        assert (math.isnan(row["gen"]) and math.isnan(full["gen"])) or row["gen"] == full["gen"]


def test_score_requests_token_accuracy_by_hand(smol):
    """rel/gen are the fractions of teacher-forced argmax tokens equal to the target tokens."""
    model, tok = smol
    request = EditRequest("The capital of France is", "Paris, the city of lights and rain",
                          rephrases=("The Eiffel Tower is located in the city of", "France's capital city is"))
    row = score_requests(model, tok, [request], exact=False)[0]
    expected = []
    with torch.no_grad():
        for prompt in (request.prompt, *request.rephrases):
            pair = encode_pair(tok, prompt, request.target)
            logits = model(input_ids=torch.tensor([pair.prompt_ids + pair.target_ids])).logits[0, len(pair.prompt_ids) - 1: -1]
            hits = (logits.argmax(-1) == torch.tensor(pair.target_ids)).float()
            expected.append(hits.mean().item())
    assert 0.0 < expected[0] < 1.0  # partial credit: the case this test is about
    assert row["rel"] == pytest.approx(expected[0])
    assert row["gen"] == pytest.approx((expected[1] + expected[2]) / 2)


def test_pair_is_hashable_value():
    assert Pair((1, 2), (3,)) == Pair((1, 2), (3,)) and len({Pair((1,), (2,)), Pair((1,), (2,))}) == 1
