"""LLaVA-CMoE and its baselines: the task suite, PGKE's rule, the task locator, the learners' invariants, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from minedit.continual import locator as loc
from minedit.continual import suite
from minedit.continual.learners import LEARNERS, ContinualConfig
from minedit.continual.probe import expansion_layers, load_balancing_loss, most_used
from minedit.continual.runner import accuracy, cache_tasks, summarise, text_positions
from minedit.data import DataError

from conftest import REPO, SAMPLES


# ---------------------------------------------------------------- the task suite

def test_tasks_are_deterministic_and_test_renders_are_held_out():
    for name in suite.TASKS:
        a, b = suite.generated_task(name, 20, 10), suite.generated_task(name, 20, 10)
        assert a == b
        assert all(r.seed < suite.HELD_OUT_SEED_BASE for r in a.train)
        assert all(r.seed >= suite.HELD_OUT_SEED_BASE for r in a.test)
        assert a.train[0].image().tobytes() == b.train[0].image().tobytes()
        assert len(a.answers()) >= 2, name


def test_every_answer_is_one_token(vlm):
    tok = vlm[1].tokenizer
    for name in suite.TASKS:
        for answer in suite.generated_task(name, 200, 1).answers():
            assert len(tok(" " + answer, add_special_tokens=False).input_ids) == 1, (name, answer)


def test_the_shipped_suite_is_what_the_generator_writes(tmp_path):
    subprocess.run([sys.executable, str(SAMPLES / "generate_continual.py"), "--out-dir", str(tmp_path)], check=True)
    for name in suite.DEFAULT_ORDER:
        assert (tmp_path / f"{name}.json").read_bytes() == (SAMPLES / "continual" / f"{name}.json").read_bytes(), name
        task = suite.load_task(SAMPLES / "continual" / f"{name}.json")
        assert task == suite.generated_task(name, 320, 150)


@pytest.mark.parametrize("payload, where", [
    ("not json", "not valid JSON"),
    ({"train": [], "test": []}, "field 'task'"),
    ({"task": "t", "train": [{"question": "q?", "answer": "yes", "items": [["circle", "red", "medium", 0, None]], "seed": 1}],
      "test": [{"question": "q?", "items": [["circle", "red", "medium", 0, None]], "seed": 1}]}, "record 0: field 'answer'"),
    ({"task": "t", "train": [{"question": "q?", "answer": "yes", "items": [["blob", "red", "medium", 0, None]], "seed": 1}],
      "test": [{"question": "q?", "answer": "no", "image": "x.png"}]}, "record 0: field 'items'"),
    ({"task": "t", "train": [{"question": "q?", "answer": "yes", "image": "missing.png"}], "test": []}, "field 'image'"),
])
def test_a_bad_task_file_names_file_record_and_field(tmp_path, payload, where):
    path = tmp_path / "task.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(DataError) as err:
        suite.load_task(path)
    assert str(path) in str(err.value) and where in str(err.value)


# ---------------------------------------------------------------- PGKE and the task locator (formulas)

def test_pgke_grows_the_layers_used_above_mean_minus_alpha_std():
    usage = torch.tensor([0.1, 0.5, 0.2, 0.9])
    m, s = usage.mean(), usage.std()
    for alpha in (0.0, 0.5, -0.5):
        assert expansion_layers(usage, alpha).tolist() == (usage > m - alpha * s).tolist()
    assert expansion_layers(usage, 0.0).tolist() == [False, True, False, True]


def test_load_balancing_loss_is_one_when_balanced_and_e_when_collapsed():
    balanced = torch.eye(4)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 2] = 1.0
    assert load_balancing_loss(balanced).item() == pytest.approx(1.0)
    assert load_balancing_loss(collapsed).item() == pytest.approx(4.0)
    assert most_used(torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.6, 0.3]]), n_old=2) == 1


def _clusters(n=200, d=24, seed=0):
    """Three tasks' features: fixed centres, very different spreads, noise drawn from ``seed``."""
    centres = torch.randn(3, d, generator=torch.Generator().manual_seed(123)) * 3
    g = torch.Generator().manual_seed(seed)
    spreads = (0.3, 1.0, 3.0)
    return [centres[t] + spreads[t] * torch.randn(n, d, generator=g) for t in range(3)]


def test_the_locator_z_scores_each_task_by_its_own_training_errors_and_picks_the_lowest():
    train, test = _clusters(seed=0), _clusters(seed=1)
    ptl = loc.ProbabilisticTaskLocator(24, loc.LocatorConfig(hidden=16, latent=4, steps=300))
    g = torch.Generator().manual_seed(0)
    for x in train:
        ptl.add_task(x, g)
    x = torch.cat(test)
    errors = torch.stack([v.error(x) for v in ptl.vaes], -1)
    expected = (errors - torch.stack([v.err_mean for v in ptl.vaes])) / torch.stack([v.err_std for v in ptl.vaes])
    assert torch.allclose(ptl.scores(x), expected)
    truth = torch.arange(3).repeat_interleave(200)
    assert (ptl.locate(x) == truth).float().mean() >= 0.95


def test_task_routers_keep_an_old_tasks_routing_and_obey_the_oracle():
    ptl = loc.ProbabilisticTaskLocator(8, loc.LocatorConfig(steps=50))
    g = torch.Generator().manual_seed(0)
    routers = loc.TaskRouters(8, 2, ptl)
    routers.add_task(g)
    routers.grow(2, g)
    ptl.add_task(torch.randn(50, 8, generator=g), g)
    x = torch.randn(5, 8, generator=g)
    before = routers(x).weights.clone()  # (5, 2)
    routers.add_task(g)
    routers.grow(3, g)  # task 1's experts: old task 0's router never sees them
    with loc.TaskRouters.forced([routers], torch.zeros(5, dtype=torch.long)):
        old = routers(x)
    assert old.weights.shape == (5, 5) and torch.equal(old.weights[:, :2], before) and not old.weights[:, 2:].any()
    with loc.TaskRouters.forced([routers], torch.ones(5, dtype=torch.long)):
        new = routers(x)
    assert torch.allclose(new.weights.sum(-1), torch.ones(5)) and (new.weights != 0).sum(-1).eq(2).all()
    routers.shrink(1)
    assert routers.n_experts == 4 and routers.routers[-1].n_experts == 4 and routers.routers[0].n_experts == 2


# ---------------------------------------------------------------- the learners on tiny-llava

@pytest.fixture(scope="module")
def vlm():
    from minedit.models import load_model

    return load_model("tiny-llava")


SMALL = ContinualConfig(layers=2, steps=6, probe_steps=3, initial_experts=1, lr=5e-3)


@pytest.fixture(scope="module")
def cached(vlm):
    model, processor = vlm
    tasks = [suite.generated_task(name, 32, 16) for name in ("corners", "warm_or_cold")]
    return tasks, cache_tasks(model, processor, tasks, model.config.text_config.num_hidden_layers - SMALL.layers,
                              batch_size=16, progress=False)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cmoe_keeps_an_old_task_exactly_and_restores_the_model(vlm, cached):
    model, _ = vlm
    _, batches = cached
    before = _params(model)
    learner = LEARNERS.get("llava-cmoe")(model, SMALL)
    try:
        learner.learn(batches[0]["train"])
        with torch.no_grad(), learner.routing_for(batches[0]["test"][0], oracle=True):
            cb = batches[0]["test"][0]
            with learner.mixture.tracker.teacher_forcing(cb.batch.key_positions), learner.mixture.routed(cb.feature):
                h0 = cb.stack.hidden_states()
        n0 = learner.mixture.n_experts()
        stats = learner.learn(batches[1]["train"])
        assert stats["probe_usage"] is not None and len(stats["grown"]) == 2
        assert learner.mixture.n_experts() == [n + g for n, g in zip(n0, stats["grown"])]  # probes removed again
        with torch.no_grad(), learner.routing_for(cb, oracle=True):
            with learner.mixture.tracker.teacher_forcing(cb.batch.key_positions), learner.mixture.routed(cb.feature):
                h1 = cb.stack.hidden_states()
        assert torch.equal(h0, h1)  # task 0 through its own routers: bit for bit what it was
        assert learner.locator.n_tasks == 2
    finally:
        learner.restore()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_seq_moe_lora_shares_one_router_that_keeps_training(vlm, cached):
    model, _ = vlm
    _, batches = cached
    learner = LEARNERS.get("seq-moe-lora")(model, SMALL)
    try:
        learner.learn(batches[0]["train"])
        w0 = learner.mixture.routers[0].weight.detach()[:1].clone()
        learner.learn(batches[1]["train"])
        assert not torch.equal(learner.mixture.routers[0].weight.detach()[:1], w0)  # old rows drift: no PTL
        assert all(e.frozen for w in learner.mixture.wrappers for e in w.experts)
    finally:
        learner.restore()


def test_the_cached_path_matches_the_live_model(vlm, cached):
    """Scores on cached batches equal what the edited model itself predicts (the mixture's own feature hook)."""
    model, processor = vlm
    tasks, batches = cached
    learner = LEARNERS.get("llava-cmoe")(model, SMALL)
    try:
        learner.learn(batches[0]["train"])
        cb = batches[0]["test"][0]
        with torch.no_grad(), learner.mixture.capture() as feats:
            from minedit.infer import continuation_logits, encode_pair, pad_id

            rows = tasks[0].test[:16]
            pairs = [encode_pair(processor, r.question, r.answer, r.image()) for r in rows]
            logits, _ = continuation_logits(model, pairs, pad_id(processor))
        assert torch.allclose(feats["text"], cb.feature, rtol=1e-3, atol=1e-3)
        live = logits[:, 0].argmax(-1) == torch.tensor([p.target_ids[0] for p in pairs])
        assert torch.equal(live, learner.correct(cb))
    finally:
        learner.restore()


def test_the_runner_summarises_last_and_backward_transfer():
    m = [[0.9, 0.1], [0.5, 0.8]]
    s = summarise(m)
    assert s["last"] == pytest.approx(0.65) and s["bwt"] == pytest.approx(-0.4)
    batch = SimpleNamespace(attention_mask=torch.tensor([[0, 1, 1, 1, 1]]), key_positions=torch.tensor([3]),
                            input_ids=torch.tensor([[0, 7, 9, 7, 5]]))
    assert text_positions(batch, None).tolist() == [[False, True, True, True, False]]  # padding and answer out
    assert text_positions(batch, 7).tolist() == [[False, False, True, False, False]]  # image tokens out too


def test_joint_and_seq_lora_learn_a_task(vlm, cached):
    model, _ = vlm
    _, batches = cached
    cfg = ContinualConfig(layers=2, steps=25, lr=5e-3)
    learner = LEARNERS.get("seq-lora")(model, cfg)
    try:
        start = accuracy(learner, batches[0]["test"])
        learner.learn(batches[0]["train"])
        assert accuracy(learner, batches[0]["test"]) >= start + 0.3  # corners: near 0 before training
    finally:
        learner.restore()


# ---------------------------------------------------------------- the command line

def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "minedit", "continual", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--learner", "nope"], "unknown learner(s) nope"),
    (["--tasks", "corners,nowhere.json"], "nowhere.json: no such task file"),
    (["--tasks", "corners,corners"], "names a task twice"),
    (["--set", "steps=abc"], "ContinualConfig.steps"),
    (["--train", "0"], "--train must be at least 1"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    out = _cli(*args, "--out", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and message in out.stderr and not (tmp_path / "run").exists()


def test_cli_runs_a_small_sequence_and_writes_its_results(tmp_path):
    out = _cli("--tasks", "corners,warm_or_cold", "--train", "16", "--test", "16", "--learner", "seq-lora,llava-cmoe",
               "--set", "layers=2", "--set", "steps=3", "--set", "probe_steps=2", "--quiet", "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["tasks"] == ["corners", "warm_or_cold"] and len(results["start_accuracy"]) == 2
    cmoe = results["learners"]["llava-cmoe"]
    assert len(cmoe["matrix"]) == 2 and all(len(row) == 2 for row in cmoe["matrix"])
    assert {"last", "bwt", "oracle_last", "locator_accuracy", "locator_confusion"} <= set(cmoe)
    assert (tmp_path / "run" / "results.png").stat().st_size > 0 and "| llava-cmoe |" in out.stdout
