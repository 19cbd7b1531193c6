"""Meta-train LiveEdit's expert generator and routing (``python -m minedit.zoo build liveedit-generator``).

Chen et al. 2024 (LiveEdit, Sec. 3.4), on tiny-llava and the training split of minedit's VLM editing
benchmark (``data_samples/vlm_bench/train.json``: no scene, render or record of it is evaluated on).
Training has two phases, all loss weights 1 as in the public code:

1. **routing**, on the cached routing features alone (cheap, so batches are large): the visual
   filter's margins (an image of the edit's scene above the sentinel, the nearest image of any other
   scene below it) and a binary cross-entropy on ``sigmoid(s)`` among same-scene edits (1 for the
   edit's own kind of question); then frozen. The paper trains routing and generator together; apart,
   the routing sees ~120 other scenes per step instead of ~8, and the generator's locality loss knows
   where the finished filter lets an expert through.
2. **the generator**, on batches of edits (pairs about one scene), one expert per edit:
   **reliability and generality**, cross-entropy of the new answer on the edit itself (Rel), its
   rephrased question (T-Gen) and another render of its image (M-Gen), through the edit's own expert;
   **locality**, KL(unedited || edited) on an unrelated image question (M-Loc) wherever the filter lets
   the edit's expert through (``locality="forced"``: on every locality probe, the text-only T-Loc
   question too), so an expert that is wrongly routed still does little.

The experts sit beside the *last* decoder layer's MLP: only the final norm and the LM head follow, so
the frozen model runs once per record (its states at that layer are cached, as
:class:`~minedit.training.UpperStack` does) and a step costs the generator and the head on a few
answer positions. What the build measured (losses, held-out accuracies, routing) is written next to
the weights in ``liveedit.json``.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..arch import arch_spec, num_layers
from .. import world
from ..data import read_records
from ..fsio import atomic_folder
from ..infer import encode_pair, pad_id
from ..moe.features import masked_mean
from ..moe.filtering import VisualFilterRouter
from ..moe.generator import IMAGE, PAD, QUESTION, ExpertGenerator, expert_delta, segments_for
from ..paths import samples_dir
from ..training import FrozenHead, UpperStack, batch_from_pairs

log = logging.getLogger(__name__)
TARGET_KINDS, LOCALITY_KINDS = ("rel", "t_gen", "m_gen"), ("t_loc", "m_loc")


@dataclass(frozen=True)
class Recipe:
    """Settings of the build (defaults: well under 30 minutes on a 2-core CPU)."""

    seed: int = 0
    rank: int = 4  # the paper's r
    width: int = 256  # the generator's attention width
    heads: int = 4
    route_width: int = 128  # width of the routing projections (phi, psi)
    steps: int = 2500
    batch: int = 16  # edits per step: 8 scenes x 2 kinds of question
    lr: float = 1e-4  # Adam, the paper's (3e-4 and 1e-3 silenced every expert's ReLU for good within 100 steps)
    warmup: int = 100  # steps of linear learning-rate warm-up, and
    clip: float = 1.0  # a gradient-norm clip: without them one early step could push every ReLU below zero
    margin_scale: float = 10.0  # gamma of the visual filter's softplus margins
    route_steps: int = 3000  # phase 1, the routing alone on cached features (seconds per hundred steps)
    route_batch: int = 128  # edits per routing step: each query is kept from ~120 other scenes' images
    route_lr: float = 1e-3  # the routing projections are linear: no ReLU to silence
    locality: str = "routed"  # KL on locality probes only where the filter keeps the expert ("forced": always)
    holdout: float = 0.1  # fraction of the training scenes kept out of training, to measure the build
    records: int | None = 2000  # the first N training records (caching all 3,383 alone would take ~20 minutes)
    cache_batch: int = 32  # sequences per frozen forward pass while caching
    threads: int | None = None  # torch threads (None: torch's default)


def artifact_dir() -> Path:
    return samples_dir() / "liveedit"


def train_split() -> Path:
    return samples_dir() / "vlm_bench" / "train.json"


def image_text_means(hidden: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """(B, 2d) ``[mean over image positions, mean over question positions]``: what
    :class:`~minedit.moe.features.ImageTextHidden` reads at a prefill (tests check they agree)."""
    return torch.cat([masked_mean(hidden, segments == IMAGE), masked_mean(hidden, segments == QUESTION)], dim=-1)


@torch.no_grad()
def cache_pairs(model, processor, pairs, layer: int, batch_size: int) -> list[dict]:
    """Run each (prompt, target) pair through the frozen model once; keep, per pair: the input of
    ``layer`` with each position's role (for the generator), the image+text routing feature, and at
    the positions that predict a target token the MLP's input ``x``, the layer's output ``out`` and
    the gold token (the tail after the experts is the final norm and the head: recomputed per step)."""
    image_token = getattr(model.config, "image_token_id", None)
    out_rows = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="cache", unit="batch", leave=False):
        batch = batch_from_pairs(pairs[start: start + batch_size], pad_id(processor))
        stack = UpperStack(model, layer, batch, from_mlp=True)
        out = stack.residual + stack.mlp(stack.mlp_in)  # (B, L, d) the layer's output, no expert
        seg = segments_for(batch.input_ids, batch.attention_mask, batch.key_positions, image_token)
        feats = image_text_means(stack.hidden, seg)
        for row in range(len(batch.input_ids)):
            n = int(batch.attention_mask[row].sum())
            where = (batch.labels[row, 1:] != -100).nonzero().flatten()  # positions predicting a target
            out_rows.append({"hidden": stack.hidden[row, :n].clone(), "seg": seg[row, :n].clone(), "feat": feats[row],
                             "x": stack.mlp_in[row, where].clone(), "out": out[row, where].clone(),
                             "gold": batch.labels[row, where + 1].clone()})
    return out_rows


def record_pairs(processor, rec: dict) -> list[tuple[str, object]]:
    """(role, pair) of one benchmark record: the edit (which is also its Rel probe), then its probes as
    the metrics build them (t_gen, m_gen, t_loc, m_loc); images rendered in memory from the record's
    scene specs and seeds."""
    scene, other = world.Scene(**rec["scene_spec"]), world.Scene(**rec["m_loc_scene_spec"])
    image, rephrased = world.render(scene, rec["image_seed"]), world.render(scene, rec["image_rephrase_seed"])
    return [("edit", encode_pair(processor, rec["src"], rec["alt"], image)),  # also the Rel probe
            ("t_gen", encode_pair(processor, rec["rephrase"], rec["alt"], image)),
            ("m_gen", encode_pair(processor, rec["src"], rec["alt"], rephrased)),
            ("t_loc", encode_pair(processor, rec["loc"], rec["loc_ans"])),
            ("m_loc", encode_pair(processor, rec["m_loc_q"], rec["m_loc_a"], world.render(other, rec["m_loc_seed"])))]


def cache_split(model, processor, raw: list[dict], layer: int, batch_size: int) -> list[dict]:
    """Per record: its scene and kind, the edit's cached pass and its five probes' cached passes."""
    owners, pairs = [], []
    for i, rec in enumerate(raw):
        for role, pair in record_pairs(processor, rec):
            owners.append((i, role))
            pairs.append(pair)
    cached = cache_pairs(model, processor, pairs, layer, batch_size)
    records = [{"scene": rec["scene_id"], "kind": rec["kind"], "probes": []} for rec in raw]
    for (i, role), row in zip(owners, cached):
        if role == "edit":  # the edit itself is its Rel probe
            records[i]["edit"] = row
            records[i]["probes"].append(("rel", row))
        else:
            records[i]["probes"].append((role, row))
    return records


def routing_losses(router: VisualFilterRouter, batch: list[dict], gamma: float) -> dict[str, torch.Tensor]:
    """The routing losses on a batch of edits and their probes (each probe a query, each edit a key).

    Visual: every image of an edit's scene above the sentinel, ``softplus(gamma (cos_z - cos_e))``, and
    the *most similar* image of any other scene below it, ``softplus(gamma (max cos_other - cos_z))``
    (one wrong survivor is enough to break locality, so the hardest one is what is pushed). Text:
    binary cross-entropy of ``sigmoid(s)`` among the edits of the query's scene, 1 for its own edit."""
    probes = [(i, kind, row) for i, r in enumerate(batch) for kind, row in r["probes"]]
    phi_e, psi_e, _ = router.project(torch.stack([r["edit"]["feat"] for r in batch]))  # (B, w)
    phi_q, psi_q, has_image = router.project(torch.stack([row["feat"] for *_, row in probes]))  # (P, w)
    visual = phi_q @ phi_e.T  # (P, B)
    sentinel = router.sentinel_similarity(phi_q)  # (P, 1)
    scenes = [r["scene"] for r in batch]
    probe_scene = [batch[i]["scene"] if kind != "m_loc" else None for i, kind, _ in probes]  # m_loc: another scene
    same = torch.tensor([[ps is not None and ps == s for s in scenes] for ps in probe_scene])  # (P, B)
    pos, neg = same & has_image[:, None], ~same & has_image[:, None]
    hardest = visual.masked_fill(~neg, -2.0).max(-1).values[:, None]  # (P, 1) nearest other scene
    margin = (_mean(F.softplus(gamma * (sentinel - visual))[pos])
              + _mean(F.softplus(gamma * (hardest - sentinel))[neg.any(-1)]))
    s = router.log_tau.exp() * psi_q @ psi_e.T + router.bias  # (P, B)
    asks = torch.tensor([kind in TARGET_KINDS for _, kind, _ in probes])[:, None] & pos
    own = torch.zeros_like(same)
    own[torch.arange(len(probes)), torch.tensor([i for i, *_ in probes])] = True
    text = F.binary_cross_entropy_with_logits(s[asks], own[asks].float()) if asks.any() else s.sum() * 0
    return {"visual": margin, "text": text}


def train_routing(router: VisualFilterRouter, records: list[dict], recipe: "Recipe") -> list[dict]:
    """Phase 1: the routing projections, sentinel, tau and b on the cached features alone (cheap, so
    large batches give every query many other scenes to be kept from). Sets ``router.centre`` first."""
    with torch.no_grad():
        router.centre.copy_(torch.stack([r["edit"]["feat"] for r in records]).mean(0))
    opt = torch.optim.Adam(router.parameters(), lr=recipe.route_lr)
    batches, history = _batches(records, recipe.route_batch, random.Random(recipe.seed + 1)), []
    for step in tqdm(range(recipe.route_steps), desc="train routing", unit="step", leave=False):
        parts = routing_losses(router, next(batches), recipe.margin_scale)
        opt.zero_grad(set_to_none=True)
        sum(parts.values()).backward()
        opt.step()
        if step % 500 == 0 or step == recipe.route_steps - 1:
            history.append({"step": step, **{k: round(v.item(), 4) for k, v in parts.items()}})
    return history


class Trainer:
    """Phase 2, one step = generate experts for a batch of edits, then the LM and locality losses
    (the routing is trained and frozen: it decides where the locality loss applies)."""

    def __init__(self, model, generator: ExpertGenerator, router: VisualFilterRouter, recipe: Recipe):
        spec = arch_spec(model)
        self.norm, self.head = model.get_submodule(spec.final_norm), FrozenHead(model.get_output_embeddings())
        self.generator, self.router, self.recipe = generator, router, recipe

    def losses(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        hidden = torch.nn.utils.rnn.pad_sequence([r["edit"]["hidden"] for r in batch], batch_first=True)
        seg = torch.nn.utils.rnn.pad_sequence([r["edit"]["seg"] for r in batch], batch_first=True, padding_value=PAD)
        U, V = self.generator(hidden, seg)  # (B, r, d) each
        probes = [(i, kind, row) for i, r in enumerate(batch) for kind, row in r["probes"]]
        kept = self.kept(batch, probes)  # (P,) the probe's own expert passes the filter
        probe = torch.cat([torch.full((len(row["x"]),), j) for j, (*_, row) in enumerate(probes)])  # (N,) per position
        owner = torch.tensor([i for i, *_ in probes])[probe]  # (N,) the edit whose expert is applied
        x, out = torch.cat([row["x"] for *_, row in probes]), torch.cat([row["out"] for *_, row in probes])
        is_target = torch.tensor([kind in TARGET_KINDS for _, kind, _ in probes])[probe]
        gold = torch.cat([row["gold"] for *_, row in probes])
        delta = expert_delta(x[:, None], U[owner], V[owner])[:, 0]  # (N, d): each position's own expert, weight 1
        logits = self.head(self.norm(out + delta))  # (N, V)
        ce = F.cross_entropy(logits[is_target], gold[is_target])
        # locality: "forced" applies the expert to every locality probe; "routed" only where the router lets it
        # through (the filter, not the expert, is what keeps an unrelated image away; a text-only query never passes)
        local = ~is_target & (kept[probe] if self.recipe.locality == "routed" else True)
        if local.any():
            with torch.no_grad():
                before = F.log_softmax(self.head(self.norm(out[local])), -1)
            kl = F.kl_div(F.log_softmax(logits[local], -1), before, log_target=True, reduction="batchmean")
        else:
            kl = logits.sum() * 0
        return {"ce": ce, "kl": kl}

    @torch.no_grad()
    def kept(self, batch: list[dict], probes: list) -> torch.Tensor:
        """(P,) whether each probe's own edit's expert survives the visual filter."""
        phi_e, _, _ = self.router.project(torch.stack([batch[i]["edit"]["feat"] for i, *_ in probes]))
        phi_q, _, has_image = self.router.project(torch.stack([row["feat"] for *_, row in probes]))
        return ((phi_q * phi_e).sum(-1) > self.router.sentinel_similarity(phi_q)[:, 0]) & has_image


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.sum()  # an empty selection adds nothing (not NaN)


def _batches(records: list[dict], size: int, rng: random.Random):
    """Endless batches of ``size`` edits, two per scene where a scene has two (different kinds)."""
    by_scene = defaultdict(list)
    for r in records:
        by_scene[r["scene"]].append(r)
    scenes = sorted(by_scene)
    while True:
        rng.shuffle(scenes)
        batch = []
        for scene in scenes:
            batch += rng.sample(by_scene[scene], min(2, len(by_scene[scene])))
            if len(batch) >= size:
                yield batch[:size]
                batch = []


@torch.no_grad()
def measure(trainer: Trainer, records: list[dict]) -> dict:
    """On held-out scenes: each probe's target-token accuracy through its own expert (rel, t_gen, m_gen),
    locality agreement with the expert forced on (t_loc, m_loc), and the routing over all of them as one
    pool: own expert kept and heaviest (target probes), no expert kept (m_loc, t_loc)."""
    hits = defaultdict(list)
    for start in range(0, len(records), 32):
        batch = records[start: start + 32]
        hidden = torch.nn.utils.rnn.pad_sequence([r["edit"]["hidden"] for r in batch], batch_first=True)
        seg = torch.nn.utils.rnn.pad_sequence([r["edit"]["seg"] for r in batch], batch_first=True, padding_value=PAD)
        U, V = trainer.generator(hidden, seg)
        for i, r in enumerate(batch):
            for kind, row in r["probes"]:
                edited = trainer.head(trainer.norm(row["out"] + expert_delta(row["x"][None], U[i:i + 1], V[i:i + 1])[0]))
                if kind in TARGET_KINDS:
                    hits[kind].append((edited.argmax(-1) == row["gold"]).float().mean().item())
                else:
                    before = trainer.head(trainer.norm(row["out"])).argmax(-1)
                    hits[kind].append((edited.argmax(-1) == before).float().mean().item())
    router = copy.deepcopy(trainer.router)  # a pool of every held-out edit
    router.keys_image, router.keys_text = router.keys_image[:0], router.keys_text[:0]
    router.grow(len(records))
    router.anchor(torch.arange(len(records)), torch.stack([r["edit"]["feat"] for r in records]))
    for i, r in enumerate(records):
        for kind, row in r["probes"]:
            w = router(row["feat"][None]).weights[0]
            if kind in TARGET_KINDS:
                hits[f"route_{kind}"].append(float(w.argmax() == i and w[i] > 0))
            else:
                hits[f"route_{kind}_none"].append(float((w == 0).all()))
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def build(out: Path | None = None, recipe: Recipe = Recipe(), data: Path | None = None) -> dict:
    """Cache the training split, train, measure on held-out scenes, write the artifact; returns the report."""
    from ..models import load_model

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    start = time.perf_counter()
    model, processor = load_model("tiny-llava")
    layer = num_layers(model) - 1
    raw = read_records(Path(data) if data else train_split())[: recipe.records]
    records = cache_split(model, processor, raw, layer, recipe.cache_batch)
    scenes = sorted({r["scene"] for r in records})
    held = set(random.Random(recipe.seed).sample(scenes, max(1, int(recipe.holdout * len(scenes)))))
    train, held_out = [r for r in records if r["scene"] not in held], [r for r in records if r["scene"] in held]
    cached = time.perf_counter() - start
    d = model.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(recipe.seed)
    generator = ExpertGenerator(d, recipe.rank, recipe.width, recipe.heads, generator=gen)
    router = VisualFilterRouter(2 * d, recipe.route_width, generator=gen)
    route_history = train_routing(router, train, recipe)
    router.requires_grad_(False)
    trainer = Trainer(model, generator, router, recipe)
    opt = torch.optim.Adam(generator.parameters(), lr=recipe.lr)
    batches, history = _batches(train, recipe.batch, random.Random(recipe.seed)), []
    for step in tqdm(range(recipe.steps), desc="train generator", unit="step"):
        parts = trainer.losses(next(batches))
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), recipe.clip)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * min(1.0, (step + 1) / recipe.warmup)
        opt.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            history.append({"step": step, **{k: round(v.item(), 4) for k, v in parts.items()}})
            log.info("step %d %s", step, history[-1])
    report = {"layer": layer, "d": d, "train_records": len(train), "held_out_records": len(held_out),
              "held_out": measure(trainer, held_out), "routing_history": route_history, "history": history, "cache_seconds": round(cached, 1),
              "build_seconds": round(time.perf_counter() - start, 1), "recipe": asdict(recipe)}
    save(Path(out) if out is not None else artifact_dir(), generator, router, report)
    return report


def save(folder: Path, generator: ExpertGenerator, router: VisualFilterRouter, report: dict) -> None:
    """``generator.safetensors`` (the generator and the routing projections) and ``liveedit.json``, atomically."""
    from safetensors.torch import save_file

    tensors = {**{f"generator.{k}": v for k, v in generator.state_dict().items()},
               **{f"router.{k}": v for k, v in router.state_dict().items() if not k.startswith("keys_")}}
    with atomic_folder(folder) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / "generator.safetensors"))
        (tmp / "liveedit.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
