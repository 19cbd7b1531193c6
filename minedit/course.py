"""Exercise checks for the course notebooks (``notebooks/src/*.py``), ARENA-style.

Every exercise in the notebooks asks the learner to write one mechanism as a function, then calls

    fn = course.checked(my_fn, course.check_x, fallback=<minedit's own function>)

``check_x(fn)`` compares ``fn`` with minedit's implementation on seeded random and edge cases and raises
``AssertionError`` with a message that says what differs; a stub that still raises ``NotImplementedError``
fails it too (the error propagates). :func:`checked` is the notebook-friendly wrapper: on a stub it says
so and returns ``fallback``, so the later cells of the learner's notebook run on the library's version;
a wrong answer still raises. ``tests/test_exercises.py`` proves each check fails on the stub and passes
on the solution, both read from the notebook sources.

This module talks to the learner, so it prints (the rest of the package does not).
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Callable

import torch

SAMPLES = Path(__file__).resolve().parent.parent / "data_samples"  # the shipped edit data


def sample_path(name: str) -> str:
    """Path of a file in ``data_samples/``, relative to the working directory when it lies below the
    repository (so stored notebook outputs show ``../data_samples/...``, not a machine's home)."""
    path = SAMPLES / name
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def checked(fn: Callable, check: Callable, fallback: Callable, *args, **kwargs) -> Callable:
    """Run ``check(fn, *args)``; return ``fn`` when it passes, ``fallback`` when ``fn`` is still a stub."""
    try:
        check(fn, *args, **kwargs)
    except NotImplementedError:
        where = f"{getattr(fallback, '__module__', '')}.{getattr(fallback, '__qualname__', repr(fallback))}"
        print(f"{fn.__name__} is not written yet (NotImplementedError): later cells use {where.lstrip('.')}")
        return fallback
    print(f"{fn.__name__}: check passed")
    return fn


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


# ----------------------------------------------------------------------------------------------- 00: metrics
def check_token_accuracy(fn: Callable) -> None:
    """``fn(pred (T,) long tensor, target sequence of T ints) -> float`` against ``metrics.token_accuracy``."""
    from .metrics import token_accuracy

    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([1, 2, 3, 4]), (1, 2, 0, 0)), (torch.tensor([7]), (7,)), (torch.tensor([7]), [8]),
             (torch.tensor([5, 5, 5]), (5, 5, 5))]
    for _ in range(50):
        n = int(torch.randint(1, 8, (1,), generator=g))
        target = torch.randint(0, 4, (n,), generator=g)  # a small vocabulary, so some positions agree
        cases.append((torch.randint(0, 4, (n,), generator=g), tuple(int(t) for t in target)))
    for pred, target in cases:
        got, want = fn(pred, target), token_accuracy(pred, target)
        assert isinstance(got, float), f"return a Python float (use .item()), got {type(got).__name__}"
        assert _close(got, want), f"pred={pred.tolist()} target={list(target)}: got {got}, expected {want}"


def check_exact_match(fn: Callable) -> None:
    """``fn(generated, target) -> bool`` against ``metrics.exact_match`` (normalised, whole-word prefix)."""
    from .metrics import exact_match

    cases = [("Paris", "Paris"), (" paris.", "Paris"), ("Parisian", "Paris"), ("Paris, France", "Paris"),
             ("The Beatles", "Beatles"), ("New", "New Delhi"), ("New Delhi is big", "New Delhi"), ("", "Paris"),
             ("Paris", ""), ("swedish  krona", "Swedish krona"), ("Rome Italy", "Rome, Italy"), ("Rom", "Rome")]
    words = ["Paris", "paris", "Parisian", "the", "New", "Delhi", "York", ",", ".", "rand", "a"]
    rng = random.Random(0)
    for _ in range(300):
        gen = " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
        cases.append((gen, " ".join(rng.choice(words) for _ in range(rng.randint(1, 2)))))
    for gen, target in cases:
        got, want = fn(gen, target), exact_match(gen, target)
        assert bool(got) == want, f"generated={gen!r} target={target!r}: got {got}, expected {want}"


# ------------------------------------------------------------------------------------------------ 01: FT-L
def project_linf(weight: torch.Tensor, original: torch.Tensor, delta: float) -> torch.Tensor:
    """FT-L's projection (what ``FTEditor`` applies after every step): clip W into [W0 - delta, W0 + delta]."""
    return torch.clamp(weight, original - delta, original + delta)


def check_projection(fn: Callable, model=None, tokenizer=None) -> None:
    """``fn(weight, original, delta) -> weight`` on random matrices; with a model, also against the ``ft``
    editor itself: an FT-L edit with ``norm_constraint=delta`` must already lie inside the ball."""
    g = torch.Generator().manual_seed(0)
    for delta in (0.0, 1e-3, 0.1, 1.0, 10.0):
        w0, w = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g) * 2
        kept = w.clone()
        got = fn(w, w0, delta)
        assert torch.equal(w, kept), "do not change `weight` in place: return a new tensor"
        want = project_linf(w, w0, delta)
        assert got.shape == want.shape and torch.allclose(got, want, atol=0), f"delta={delta}: wrong projection"
    if model is None:
        return
    from .data import EditRequest
    from .editors import make_editor

    editor = make_editor("ft", model, tokenizer, norm_constraint=1e-3)
    name = editor.param_name
    original = model.get_parameter(name).detach().clone()
    editor.edit(EditRequest("The Eiffel Tower is located in the city of", "Rome"))
    edited = model.get_parameter(name).detach().clone()
    editor.restore()
    assert not torch.equal(edited, original), "the edit changed nothing"
    assert torch.equal(fn(edited, original, 1e-3), edited), "the ft editor's weight is not a fixed point of your projection"


# ------------------------------------------------------------------------------------------------- 02: GRACE
def check_grace_lookup(fn: Callable) -> None:
    """``fn(query (B, d), keys (K, d), radii (K,)) -> (B,) long`` against ``GraceCodebook.lookup``:
    the nearest key's index where the query lies within its radius, else -1."""
    from .editors.grace import GraceCodebook

    g = torch.Generator().manual_seed(0)
    d = 8
    for n_keys in (0, 1, 3, 10):
        book = GraceCodebook(torch.nn.Linear(d, 2), None, d, 2)
        book.keys = torch.randn(n_keys, d, generator=g)
        book.radii = torch.rand(n_keys, generator=g) * 3
        near = book.keys[torch.randint(0, max(n_keys, 1), (12,), generator=g) % max(n_keys, 1)] if n_keys else torch.zeros(12, d)
        query = torch.cat([near + torch.randn(12, d, generator=g) * s for s in (0.0, 0.3, 1.0)]
                          + [torch.randn(6, d, generator=g) * 3])
        got, want = fn(query, book.keys, book.radii), book.lookup(query)
        assert torch.is_tensor(got) and got.shape == want.shape, f"expected a {tuple(want.shape)} tensor, got {got!r}"
        bad = (got.long() != want).nonzero().flatten()
        assert len(bad) == 0, (f"{n_keys} keys: query {int(bad[0])} -> {int(got[bad[0]])}, expected {int(want[bad[0]])} "
                               "(nearest key if within its radius, else -1)")


def check_radius_rule(fn: Callable) -> None:
    """``fn(distance, radius, same_target, eps) -> (action, radius, new radius)`` against ``grace.radius_rule``."""
    from .editors.grace import radius_rule

    g = torch.Generator().manual_seed(0)
    cases = [(None, 0.0, False, 1.0), (3.0, 1.0, True, 1.0), (1.5, 1.0, True, 1.0), (0.5, 1.0, True, 1.0),
             (1.5, 1.0, False, 1.0), (2.0, 1.0, False, 1.0), (2.0, 1.0, True, 1.0)]
    cases += [(torch.rand(1, generator=g).item() * 4, torch.rand(1, generator=g).item() * 2,
               bool(torch.rand(1, generator=g) < 0.5), 1.0) for _ in range(200)]
    for case in cases:
        got, want = fn(*case), radius_rule(*case)
        assert tuple(got) == want, f"distance, radius, same_target, eps = {case}: got {got}, expected {want}"


# ---------------------------------------------------------------------------------------- 03: mixture of LoRA
def _experts(A: torch.Tensor, B: torch.Tensor, scale: float) -> list:
    """minedit's ``LoRAExpert`` modules holding the given factors (A (E, r, d_in), B (E, d_out, r))."""
    from .moe import LoRAExpert

    experts = []
    for a, b in zip(A, B):
        expert = LoRAExpert(a.shape[1], b.shape[0], rank=a.shape[0], alpha=scale * a.shape[0])
        with torch.no_grad():
            expert.A.copy_(a)
            expert.B.copy_(b)
        experts.append(expert)
    return experts


def moe_lora(x: torch.Tensor, base: torch.nn.Module, A: torch.Tensor, B: torch.Tensor, scale: float,
             g: torch.Tensor) -> torch.Tensor:
    """ELDER's Eq. 1 with minedit's ``LoRAExpert`` modules: ``base(x) + sum_e g[:, e] * expert_e(x)``."""
    out = base(x)
    for e, expert in enumerate(_experts(A, B, scale)):
        out = out + g[:, e, None, None].to(out.dtype) * expert(x)  # (B, L, d_out)
    return out


def check_moe_lora(fn: Callable) -> None:
    """``fn(x (B, L, d_in), base, A (E, r, d_in), B (E, d_out, r), scale, g (B, E)) -> (B, L, d_out)``
    against a mixture of minedit's ``LoRAExpert`` modules (the same experts ``MoELoRALinear`` holds)."""
    gen = torch.Generator().manual_seed(0)
    for n_experts, rank in ((1, 2), (4, 8), (6, 3)):
        base = torch.nn.Linear(10, 7)
        torch.nn.init.normal_(base.weight, generator=gen)
        A = torch.randn(n_experts, rank, 10, generator=gen)
        Bm = torch.randn(n_experts, 7, rank, generator=gen)
        g = torch.rand(3, n_experts, generator=gen) * (torch.rand(3, n_experts, generator=gen) < 0.6)
        g[0] = 0  # a deferred sequence: the base layer alone
        x = torch.randn(3, 5, 10, generator=gen)
        with torch.no_grad():
            got, want = fn(x, base, A, Bm, 2.0, g), moe_lora(x, base, A, Bm, 2.0, g)
        assert torch.is_tensor(got) and got.shape == want.shape, f"expected shape {tuple(want.shape)}, got {getattr(got, 'shape', got)}"
        assert torch.allclose(got, want, atol=1e-4), f"{n_experts} experts of rank {rank}: max error {(got - want).abs().max():.2e}"


def check_topk(fn: Callable) -> None:
    """``fn(probs (B, E), k) -> weights (B, E)`` against ``TopKRouter``'s routing weights."""
    from .moe import TopKRouter

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        router = TopKRouter(16, n_experts=6, k=k, generator=g)
        routing = router(torch.randn(5, 16, generator=g))
        got = fn(routing.probs, k)
        assert torch.is_tensor(got) and got.shape == routing.weights.shape, f"k={k}: expected shape {tuple(routing.weights.shape)}"
        assert torch.allclose(got, routing.weights, atol=1e-6), f"k={k}: got {got[0].tolist()}, expected {routing.weights[0].tolist()}"


def check_guided_loss(fn: Callable) -> None:
    """``fn(probs (B, E), preset (B, k)) -> scalar`` against ``moe.guided_loss`` (value and gradient)."""
    from .moe import guided_loss

    g = torch.Generator().manual_seed(0)
    for B, E, k in ((1, 4, 1), (5, 8, 2), (3, 6, 3)):
        logits = torch.randn(B, E, generator=g, requires_grad=True)
        preset = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(B)])
        got = fn(logits.softmax(-1), preset)
        want = guided_loss(logits.softmax(-1), preset)
        assert torch.is_tensor(got) and got.dim() == 0, "return a scalar tensor (so it can be back-propagated)"
        assert torch.allclose(got, want, atol=1e-5), f"B={B}, E={E}, k={k}: got {got.item():.4f}, expected {want.item():.4f}"
        (grad_got,) = torch.autograd.grad(got, logits)
        (grad_want,) = torch.autograd.grad(want, logits)
        assert torch.allclose(grad_got, grad_want, atol=1e-5), "the value is right but the gradient is not"
    perfect = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert abs(float(fn(perfect, torch.tensor([[0, 1]])))) < 1e-5, "all mass, evenly, on the preset must give 0"


# ------------------------------------------------------------------------------------------------ 04: ELDER
def check_deferral(fn: Callable) -> None:
    """``fn(codes (B, layers, k), memory (N, layers, k), threshold) -> (B,) bool`` against ``HammingGate.defer``."""
    from .moe import HammingGate

    g = torch.Generator().manual_seed(0)

    def codes(n: int) -> torch.Tensor:
        return torch.stack([torch.stack([torch.randperm(8, generator=g)[:2].sort().values for _ in range(3)])
                            for _ in range(n)])  # (n, 3 layers, top-2 of 8 experts)

    memory = codes(6)
    queries = torch.cat([memory[:3], codes(30)])
    queries[3, 0] = memory[0, 0]  # near misses: one layer shared with a stored code
    for threshold in (0, 2, 4, 6, 8, 12):
        gate = HammingGate(threshold)
        for code in memory:
            gate.add(None, code)
        got, want = fn(queries, memory, threshold), gate.defer(None, queries)
        assert torch.is_tensor(got) and got.shape == want.shape, f"expected a {tuple(want.shape)} bool tensor"
        bad = (got.bool() != want).nonzero().flatten()
        assert len(bad) == 0, (f"threshold {threshold}: query {int(bad[0])} {queries[bad[0]].tolist()} -> defer={bool(got[bad[0]])}, "
                               f"expected {bool(want[bad[0]])}; distances {gate.distances(queries[bad[0]][None]).tolist()}")
    empty = fn(queries[:4], torch.zeros(0, 3, 2, dtype=torch.long), 4)
    assert bool(torch.as_tensor(empty).all()), "with no stored codes every input defers"


# ------------------------------------------------------------------------------------------------ 06: LEMoE
def check_kv_anchor(fn: Callable) -> None:
    """``fn(v (B, d), keys (K, d), owner (K,), n_experts, k) -> gates (B, E)`` against ``KeyedRouter``'s weights."""
    from .moe import KeyedRouter

    g = torch.Generator().manual_seed(0)
    for n_experts, per_expert, k in ((1, 1, 1), (4, 1, 1), (5, 3, 1), (6, 2, 2), (3, 4, 3)):
        router = KeyedRouter(12, k=k)
        router.grow(n_experts, g)
        for e in torch.randperm(n_experts, generator=g).tolist():  # keys end up in no particular order
            router.anchor(torch.tensor([e]), torch.randn(per_expert, 12, generator=g))
        v = torch.cat([torch.randn(6, 12, generator=g), 3 * router.keys[:1]])  # the last query points at a key
        got, want = fn(v, router.keys, router.owner, n_experts, k), router(v).weights
        assert torch.is_tensor(got) and got.shape == want.shape, f"expected shape {tuple(want.shape)}, got {getattr(got, 'shape', got)}"
        assert torch.allclose(got, want, atol=1e-5), (f"{n_experts} experts, {per_expert} keys each, top-{k}: "
                                                      f"got {got[0].tolist()}, expected {want[0].tolist()}")


def kv_anchor_gates(v: torch.Tensor, keys: torch.Tensor, owner: torch.Tensor, n_experts: int, k: int) -> torch.Tensor:
    """LEMoE's gates (``KeyedRouter``, Eq. 3-4): each expert scores its best key ``k_j . v``, top-k softmax."""
    from .moe.routers import KeyedScores, topk_routing

    table = KeyedScores(keys.shape[1])
    table.keys, table.owner, table.count = keys, owner, torch.tensor(n_experts)
    return topk_routing(table.scores(v), k).weights


# --------------------------------------------------------------------------------------------- 05: the VLM
def check_image_tokens(fn: Callable, model=None) -> None:
    """``fn(vision_config) -> int`` against tiny-llava's own count (and, given the model, the number of
    vectors its vision side really produces for one image)."""
    from transformers import CLIPVisionConfig

    from .zoo.tiny_llava import TinyLlavaSpec, num_image_tokens

    for size, patch in ((64, 16), (336, 14), (224, 32), (224, 16), (32, 8)):
        got, want = fn(CLIPVisionConfig(image_size=size, patch_size=patch)), num_image_tokens(TinyLlavaSpec(image_size=size, patch_size=patch))
        assert got == want, f"image {size}px, patches of {patch}px: got {got}, expected {want}"
    if model is not None:
        size = model.config.vision_config.image_size
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=torch.zeros(1, 3, size, size)).pooler_output[0]
        assert fn(model.config.vision_config) == feats.shape[0], (fn(model.config.vision_config), feats.shape[0])


def image_tokens(vision_config) -> int:
    """Image tokens of a ViT with LLaVA's "default" feature strategy: (image_size / patch_size)^2 (CLS dropped)."""
    return (vision_config.image_size // vision_config.patch_size) ** 2


# --------------------------------------------------------------------------------------------- 07: LiveEdit
def _router_given_scores(visual: torch.Tensor, sentinel: torch.Tensor, s: torch.Tensor):
    """A ``VisualFilterRouter`` whose ``scores`` are the given tensors: its ``forward`` applies the rule."""
    from .moe.filtering import VisualFilterRouter

    class Given(VisualFilterRouter):
        def scores(self, features):
            return visual, sentinel, s

    return Given(2, width=1, generator=torch.Generator())  # its own generator: the global RNG is left alone


def soft_route_weights(visual: torch.Tensor, sentinel: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """LiveEdit's routing weights (``VisualFilterRouter``, Sec. 3.3) from its scores: experts whose image
    similarity beats the sentinel survive, ``softmax(s) * sigmoid(s)`` over the survivors, zero elsewhere."""
    with torch.no_grad():
        return _router_given_scores(visual, sentinel, s)(None).weights


def check_soft_route(fn: Callable) -> None:
    """``fn(visual (B, E), sentinel (B, 1), s (B, E)) -> weights (B, E)`` against ``VisualFilterRouter``'s
    rule on random scores, with a row where no expert survives and a row where every expert does."""
    g = torch.Generator().manual_seed(0)
    for n_experts in (1, 2, 5, 9):
        visual = torch.rand(8, n_experts, generator=g) * 2 - 1  # cosines
        sentinel = torch.rand(8, 1, generator=g) * 2 - 1
        s = torch.randn(8, n_experts, generator=g) * 6  # text scores: tau * cos + b
        sentinel[0] = 1.5  # above every cosine: no survivor
        sentinel[1] = -1.5  # below every cosine: all survive
        sentinel[2] = float("inf")  # what the router gives a query without an image
        want = soft_route_weights(visual, sentinel, s)
        got = fn(visual.clone(), sentinel.clone(), s.clone())
        assert torch.is_tensor(got) and got.shape == want.shape, f"expected shape {tuple(want.shape)}, got {getattr(got, 'shape', got)}"
        got = got.float()
        for row, what in ((0, "no expert survives the filter"), (2, "the sentinel is inf (a query without an image)")):
            assert torch.equal(got[row], torch.zeros(n_experts)), f"{n_experts} experts, {what}: expected all zeros, got {got[row].tolist()}"
        assert not got.isnan().any(), f"{n_experts} experts: NaN in {got.tolist()} (softmax over no survivor?)"
        bad = (~torch.isclose(got, want, atol=1e-6)).any(-1).nonzero().flatten()
        if len(bad):
            b = int(bad[0])
            where = "every expert survives" if b == 1 else f"survivors {(visual[b] > sentinel[b]).nonzero().flatten().tolist()}"
            raise AssertionError(f"{n_experts} experts, row {b} ({where}; s {[round(x, 2) for x in s[b].tolist()]}): "
                                 f"got {[round(x, 4) for x in got[b].tolist()]}, expected {[round(x, 4) for x in want[b].tolist()]}")


# ------------------------------------------------------------------------------------------- 08: LLaVA-CMoE
def _locator_given_errors(errors: torch.Tensor, err_mean: torch.Tensor, err_std: torch.Tensor):
    """A ``ProbabilisticTaskLocator`` whose task VAEs make the given reconstruction errors (B, T) and have
    the given training-error statistics (T,): its ``locate`` applies the library's rule to them."""
    from .continual.locator import ProbabilisticTaskLocator, TaskVAE

    class Given(TaskVAE):
        def __init__(self, column: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
            super().__init__(1, 1, 1, generator=torch.Generator())
            self.column = column
            self.err_mean, self.err_std = mean, std

        def error(self, x):
            return self.column

    locator = ProbabilisticTaskLocator(1)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation draws: the global RNG is left alone
        for t in range(errors.shape[1]):
            locator.vaes.append(Given(errors[:, t], err_mean[t], err_std[t]))
    return locator


def locate_task(errors: torch.Tensor, err_mean: torch.Tensor, err_std: torch.Tensor) -> torch.Tensor:
    """LLaVA-CMoE's task choice (``ProbabilisticTaskLocator.locate``, Sec. 3.3) from the VAEs' errors (B, T)
    and their training-error means and spreads (T,): the task of the lowest z-scored error."""
    return _locator_given_errors(errors, err_mean, err_std).locate(torch.zeros(len(errors), 1))


def check_locate(fn: Callable) -> None:
    """``fn(errors (B, T), err_mean (T,), err_std (T,)) -> (B,) task indices`` against the
    ``ProbabilisticTaskLocator``'s rule (argmin over t of the z-scored error) on random errors, with rows
    where the raw errors, or the errors minus the means, or the errors over the spreads, pick another task."""
    g = torch.Generator().manual_seed(0)
    # T = 2 by hand: the VAEs of tasks 0 and 1 err 0.2 +- 0.05 and 1.0 +- 0.5 on their own training inputs
    hand = (torch.tensor([[0.40, 0.90],    # raw argmin: task 0; z = (4.0, -0.2): task 1
                          [0.50, 1.50],    # minus the means only: 0.3 vs 0.5, task 0; z = (6.0, 1.0): task 1
                          [0.21, 2.00],    # z = (0.2, 2.0): task 0 (and raw argmin agrees)
                          [0.10, 0.30]]),  # both below their means: z = (-2.0, -1.4): task 0
            torch.tensor([0.2, 1.0]), torch.tensor([0.05, 0.5]))
    # errors over the spreads only: 1.0 vs 2.0 picks task 0; z = (1.0, 0.1) picks task 1
    ratio = (torch.tensor([[1.0, 2.0]]), torch.tensor([0.0, 1.9]), torch.tensor([1.0, 1.0]))
    cases = [hand, ratio]
    for T in (1, 2, 3, 6):
        err_mean = torch.rand(T, generator=g) * 2 + 0.05  # the VAEs fit their own tasks more or less well
        err_std = torch.rand(T, generator=g) * 0.5 + 0.02
        errors = (err_mean + err_std * torch.randn(16, T, generator=g) * 3).abs()  # (16, T) positive errors
        cases.append((errors, err_mean, err_std))
    for errors, err_mean, err_std in cases:
        want = locate_task(errors, err_mean, err_std)
        got = fn(errors.clone(), err_mean.clone(), err_std.clone())
        assert torch.is_tensor(got) and got.shape == want.shape, \
            f"expected a {tuple(want.shape)} tensor of task indices, got {getattr(got, 'shape', got)}"
        assert not got.is_floating_point(), f"return task indices (integers), got dtype {got.dtype}"
        bad = (got.long() != want).nonzero().flatten()
        if len(bad):
            b, T = int(bad[0]), errors.shape[1]
            z = (errors[b] - err_mean) / err_std
            raise AssertionError(
                f"{T} tasks, row {b}: errors {[round(x, 3) for x in errors[b].tolist()]}, err_mean "
                f"{[round(x, 3) for x in err_mean.tolist()]}, err_std {[round(x, 3) for x in err_std.tolist()]}: got task "
                f"{int(got[b])}, expected {int(want[b])} (z-scores {[round(x, 2) for x in z.tolist()]}: the lowest wins)")


# --------------------------------------------------------------------------------------- 09: your own router
def _nearest_edit_router():
    from .moe import CosineTopKRouter

    class NearestEditRouter(CosineTopKRouter):
        """The README's "nearest-edit" router from minedit's parts: ``CosineTopKRouter`` (``tau * cos``, top-k)
        with ``sharpness`` as its ``tau``; its rows are keys once ``anchor`` points them at an edit's feature."""

        def __init__(self, d: int, k: int = 2, sharpness: float = 20.0, generator: torch.Generator | None = None):
            super().__init__(d, 0, k, tau=sharpness, generator=generator)
            self.sharpness = sharpness

    return NearestEditRouter


def check_router(cls: Callable) -> None:
    """``cls(d, k=, sharpness=)``: a router module that starts with no expert, ``grow(n, generator)`` appends
    ``n`` (old ones kept), ``anchor(experts, feature)`` sets those experts' keys to the edit's feature, and
    ``forward(features (B, d)) -> Routing`` is top-k over ``sharpness * cos(feature, key)``. Compared with
    :data:`NearestEditRouter` on seeded features (keys and queries of mixed norms), then grown and anchored again."""
    from .moe import Routing

    g = torch.Generator().manual_seed(0)

    def compare(mine, ref, queries, what):
        got, want = mine(queries.clone()), ref(queries)
        assert isinstance(got, Routing), f"forward must return a minedit.moe.Routing, got {type(got).__name__}"
        assert got.weights.shape == want.weights.shape, f"{what}: weights {tuple(got.weights.shape)}, expected {tuple(want.weights.shape)}"
        assert not got.defer.any(), f"{what}: this router never defers (defer must be all False)"
        assert torch.allclose(got.probs.float(), want.probs, atol=1e-5), \
            f"{what}: probs differ (softmax over sharpness * cosine, every expert): row 0 got {got.probs[0].tolist()}, expected {want.probs[0].tolist()}"
        assert got.chosen is not None and torch.equal(got.chosen.long(), want.chosen), \
            f"{what}: chosen experts {got.chosen[:3].tolist() if got.chosen is not None else None}, expected {want.chosen[:3].tolist()}"
        assert torch.allclose(got.weights.float(), want.weights, atol=1e-5), \
            f"{what}: weights differ (top-k renormalised to sum to one, zero elsewhere): row 0 got {got.weights[0].tolist()}, expected {want.weights[0].tolist()}"

    for d, k, sharpness, E in ((8, 1, 20.0, 1), (8, 2, 20.0, 5), (16, 2, 5.0, 9), (32, 3, 50.0, 4)):
        mine, ref = cls(d, k=k, sharpness=sharpness), NearestEditRouter(d, k=k, sharpness=sharpness)
        assert isinstance(mine, torch.nn.Module), "a router is a torch.nn.Module (the mixture keeps it in a ModuleList)"
        assert mine.n_experts == 0, f"a new router has no experts, got n_experts={mine.n_experts}"
        mine.grow(E, generator=torch.Generator().manual_seed(1))
        ref.grow(E)
        assert mine.n_experts == E, f"after grow({E}): n_experts={mine.n_experts}"
        keys = torch.randn(E, d, generator=g) * (torch.rand(E, 1, generator=g) * 5 + 0.1)  # edit features, mixed norms
        for e in range(E):
            mine.anchor(torch.tensor([e]), keys[e].clone())
            ref.anchor(torch.tensor([e]), keys[e])
        queries = torch.cat([keys + torch.randn(E, d, generator=g) * 0.3, torch.randn(8, d, generator=g) * 3])  # near edits, and anywhere
        compare(mine, ref, queries, f"d={d}, k={k}, sharpness={sharpness}, {E} anchored experts")
        before = mine(queries).probs.float()
        mine.grow(3, generator=torch.Generator().manual_seed(2))
        assert mine.n_experts == E + 3, f"grow(3) after {E} experts: n_experts={mine.n_experts}, expected {E + 3} (append, keep the old)"
        after = mine(queries).probs.float()[:, :E]
        assert torch.allclose(after / after.sum(-1, keepdim=True), before, atol=1e-4), \
            "grow changed the old experts' scores: new experts may only compete for probability mass"
        ref.grow(3)
        new = torch.randn(2, d, generator=g)
        for mod in (mine, ref):  # an edit's k experts anchored at once, as the allocation policy does; one more alone
            mod.anchor(torch.tensor([E, E + 1]), new[0].clone())
            mod.anchor(torch.tensor([E + 2]), new[1].clone())
        compare(mine, ref, torch.cat([queries, new * 2]), f"after grow(3) and anchoring the new experts (d={d}, k={k})")


# ------------------------------------------------- library-backed fallbacks for the cells after an exercise
def grace_lookup(query: torch.Tensor, keys: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """``GraceCodebook.lookup`` on given keys and radii: nearest key within its radius, else -1."""
    from .editors.grace import GraceCodebook

    book = GraceCodebook(torch.nn.Linear(keys.shape[1], 1), None, keys.shape[1], 1)
    book.keys, book.radii = keys.float(), radii.float()
    return book.lookup(query)


def topk_weights(probs: torch.Tensor, k: int) -> torch.Tensor:
    """ELDER's routing weights (``TopKRouter``, Eq. 2): the top-k probabilities renormalised, zero elsewhere."""
    top, idx = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))


def hamming_defer(codes: torch.Tensor, memory: torch.Tensor, threshold: int) -> torch.Tensor:
    """``HammingGate(threshold).defer`` with ``memory`` (N, layers, k) as its stored codes."""
    from .moe import HammingGate

    gate = HammingGate(threshold)
    for code in memory:
        gate.add(None, code)
    return gate.defer(None, codes)


NearestEditRouter = _nearest_edit_router()  # the solution's class, as minedit's parts build it (fallback of notebook 09)


# --------------------------------------------------------------------------------- 10: which editor, for what
def _recommend_cases() -> list[tuple[list[dict], dict]]:
    """(rows, needs) pairs: the stored ZsRE comparison (where the source tree has it) under the notebook's uses,
    then seeded rows with every edge the rules of :mod:`minedit.choose` name: other T and protocols, the unedited
    row, skipped rows, floors and ceilings met exactly, unmeasured metrics (None, NaN, absent), equal costs."""
    import json

    cases = []
    stored = SAMPLES.parent / "benchmarks" / "results" / "compare" / "compare.json"
    if stored.exists():
        rows = json.loads(stored.read_text())["rows"]
        for T in sorted({r["T"] for r in rows}):
            for at_least in ({}, {"rel": 0.95, "loc": 0.95}, {"rel": 0.95, "gen": 0.8, "loc": 0.95}, {"rel_em": 0.5}):
                cases.append((rows, {"T": T, "at_least": at_least}))
            cases.append((rows, {"T": T, "at_least": {"rel": 0.9}, "max_kb": 100.0}))
    rng = random.Random(0)
    names = ["none", "ft", "lora", "grace", "wise", "elder", "lemoe"]
    levels = [0.0, 0.5, 0.8, 0.9, 0.95, 1.0]
    for _ in range(80):
        metric_names = list(rng.choice([("rel", "gen", "loc"), ("rel", "t_gen", "m_gen", "t_loc", "m_loc")]))
        rows = []
        for name in rng.sample(names, rng.randint(2, len(names))):
            for T in (10, 100):
                for protocol in ("retention", "immediate"):
                    key = {"editor": name, "T": T, "protocol": protocol}
                    if name != "none" and rng.random() < 0.1:
                        rows.append({**key, "skipped": "projected 40.0 min > budget 30 min"})
                        continue
                    metrics = {m: rng.choice(levels + [round(rng.random(), 3)]) for m in metric_names}
                    metrics["rel_em"] = None  # exact match off, as compare.json stores it
                    if rng.random() < 0.15:
                        metrics[rng.choice(metric_names)] = rng.choice([None, float("nan")])
                    if rng.random() < 0.1:
                        del metrics[rng.choice(metric_names)]
                    rows.append({**key, "metrics": metrics, "seconds_per_edit": rng.choice([0.0, 0.2, 0.8, 1.0, round(rng.uniform(0.1, 3), 3)]),
                                 "inference_overhead": 1.0, "bytes_per_edit": rng.choice([0.0, 8192.0, 442368.0, 1024.0 * rng.randint(1, 700)])})
        rng.shuffle(rows)
        needs = {"T": rng.choice((10, 100)), "at_least": {m: rng.choice(levels[1:]) for m in rng.sample(metric_names, rng.randint(0, 2))}}
        if rng.random() < 0.5:
            needs["max_seconds"] = rng.choice([1.0, 0.8, 2.0])
        if rng.random() < 0.5:
            needs["max_kb"] = rng.choice([8.0, 432.0, 100.0])
        if rng.random() < 0.3:
            needs["protocol"] = "immediate"
        cases.append((rows, needs))
    return cases


def check_recommend(fn: Callable) -> None:
    """``fn(rows, T, at_least=None, max_seconds=inf, max_kb=inf, protocol="retention") -> list of editor names``
    against :func:`minedit.choose.recommend` on the stored comparison and on seeded rows (module rules there)."""
    import copy

    from .choose import recommend, shortfalls

    for i, (rows, needs) in enumerate(_recommend_cases()):
        want = recommend(rows, **needs)
        given = copy.deepcopy(rows)
        try:
            got = fn(given, **needs)
        except NotImplementedError:
            raise
        except Exception as e:  # a crash on an edge case: say which case
            raise AssertionError(f"case {i}, needs {needs}: your function raised {type(e).__name__}: {e}") from e
        assert given == rows or str(given) == str(rows), "do not change the rows (a comparison is read by everyone)"
        assert isinstance(got, list) and all(isinstance(n, str) for n in got), \
            f"return a list of editor names (str), got {type(got).__name__}: {got!r}"
        if got != want:
            differ = next((n for n in dict.fromkeys(got + want) if got.count(n) != want.count(n)), None)
            at = [r for r in rows if r["editor"] == differ and r["T"] == needs["T"]
                  and r["protocol"] == needs.get("protocol", "retention")]
            missed = shortfalls(at[0], needs["at_least"], needs.get("max_seconds", math.inf), needs.get("max_kb", math.inf)) if at else []
            if differ is None:
                why = "the same editors in another order (smallest KB/edit first, then s/edit, then the name)"
            elif got.count(differ) and want.count(differ):
                why = f"{differ!r} {got.count(differ)} times, expected {want.count(differ)}: only rows at this T and protocol count"
            elif differ == "none":
                why = "'none' is the unedited model, the reference row: never recommended"
            elif not want.count(differ):
                why = f"{differ!r} has no row at this T and protocol" if not at else f"{differ!r} misses: {'; '.join(missed)}"
            else:
                why = f"{differ!r} meets every need here (a value equal to its floor or ceiling meets it)"
            raise AssertionError(f"case {i}, needs {needs}: got {got}, expected {want}: {why}")


# ------------------------------------------------------------------------------- 11: the routing playground
def similarity_margin(features: torch.Tensor, edit_features: torch.Tensor, threshold: float) -> torch.Tensor:
    """The margin of a ``SimilarityGate(threshold)`` that holds ``edit_features`` (N, d), for each row of
    ``features`` (B, d): cosine similarity to the nearest edit minus ``threshold`` (-1 - threshold with no edit);
    >= 0 lets the sequence through (``minedit.inspection.GateCall.margin``)."""
    from .moe import SimilarityGate

    gate = SimilarityGate(threshold)
    for feature in edit_features:
        gate.add(feature)
    return gate.similarity(features) - threshold


def check_similarity_margin(fn: Callable) -> None:
    """``fn(features (B, d), edit_features (N, d), threshold) -> (B,)`` against :func:`similarity_margin` (the
    library's ``SimilarityGate``) on seeded features of mixed norms, near some edits and far from all of them,
    at several thresholds; the sign must agree with the gate's decision; last, a gate that holds no edit."""
    from .moe import SimilarityGate

    g = torch.Generator().manual_seed(0)
    cases = []
    for d, n, b, threshold in ((4, 1, 3, 0.85), (8, 5, 6, 0.85), (16, 3, 5, 0.5), (32, 7, 8, 0.99), (8, 4, 4, -0.2)):
        edits = torch.randn(n, d, generator=g) * (torch.rand(n, 1, generator=g) * 5 + 0.1)  # mixed norms
        near = edits[torch.randint(0, n, (b // 2,), generator=g)] * 3 + torch.randn(b // 2, d, generator=g) * 0.2
        far = torch.randn(b - b // 2, d, generator=g) * (torch.rand(b - b // 2, 1, generator=g) * 5 + 0.1)
        cases.append((torch.cat([near, far]), edits, threshold))
    cases.append((torch.randn(3, 8, generator=g), torch.zeros(0, 8), 0.85))  # no edit yet: every sequence defers
    for i, (features, edits, threshold) in enumerate(cases):
        got, want = fn(features.clone(), edits.clone(), threshold), similarity_margin(features, edits, threshold)
        what = f"case {i} ({len(edits)} edits of d={features.shape[1]}, threshold {threshold})"
        assert isinstance(got, torch.Tensor) and got.shape == want.shape, \
            f"{what}: return a ({len(features)},) tensor, one margin per row, got {getattr(got, 'shape', type(got).__name__)}"
        assert torch.allclose(got.float(), want, atol=1e-5), \
            f"{what}: got {[round(x, 4) for x in got.tolist()]}, expected {[round(x, 4) for x in want.tolist()]}"
        gate = SimilarityGate(threshold)
        for feature in edits:
            gate.add(feature)
        assert torch.equal(got.float() < 0, gate.defer(features)), f"{what}: a negative margin must mean the gate defers"
