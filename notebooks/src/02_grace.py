# %% [markdown]
# # 02 · GRACE: a codebook with a deferral radius
#
# **Objectives.**
# 1. See where GRACE sits in SmolLM2 and what its *key* is: the input of one MLP output projection at the last prompt token.
# 2. Write GRACE's radius rule yourself (add, expand, split) and check it against minedit's.
# 3. Run GRACE as a lifelong editor and see its profile: reliability and locality near 1, generality low.
# 4. Measure why: in key space, a rephrase of an edit is not closer to it than *other* edits are.
#
# **Time budget.** About 30 minutes; the code runs in about 2 minutes on a laptop CPU.
#
# Prerequisites: notebook 00 (metrics) and 01 (why fine-tuning forgets).

# %%
import logging

import pandas as pd
import seaborn as sns
import torch

from minedit import arch, infer
from minedit.data import load_edits
from minedit.editors import make_editor
from minedit.editors.grace import GraceConfig, radius_rule
from minedit.hooks import record
from minedit.models import load_model
from minedit.plot import edit_curves
from minedit.runner import RunConfig, run_lifelong

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
model, tokenizer = load_model("smollm2-135m")
edits = load_edits("zsre:../data_samples/zsre_sample.json")

# %% [markdown]
# ## 1. The mechanism
# GRACE (Hartvigsen et al., NeurIPS 2023) wraps one layer. It keeps a codebook of **keys** (the layer's input at
# the last prompt token of an edit), **values** (a trained replacement for the layer's output) and a **radius**
# per key. At inference the query (the same activation for the new input) is compared with the nearest key:
#
# $$h = \begin{cases} v_i & \text{if } \lVert x_q - k_i \rVert_2 \le r_i \text{ for the nearest key } i\\ W x & \text{otherwise (defer)}\end{cases}$$
#
# minedit wraps the MLP output projection of a layer two thirds up the network:

# %%
# NBVAL_CHECK_OUTPUT
config = GraceConfig()
layer = arch.default_edit_layer(model)
print("layer:", layer, "| module:", arch.layer_module_name(model, layer, "mlp_out"))
print("eps:", config.eps, "| steps:", config.steps, "| lr:", config.lr)

# %% [markdown]
# ## 2. Exercise: the radius rule
# When an edit arrives, GRACE finds the nearest key at distance `d` with radius `r`:
# - no key yet, or `d > r + eps`: **add** a key with radius `eps`;
# - otherwise, if that key was trained for the same answer: **expand** its radius so the ball reaches the query;
# - otherwise (a conflicting answer): **split**: both balls get radius `d / 2` and the new key is added.
#
# Fill in `my_radius_rule`; it returns `(action, new radius of the nearest key, radius of the added key or None)`.

# %%
def my_radius_rule(distance, radius, same_target, eps):
    if distance is None or distance > radius + eps:  # <- your code here
        return "add", radius, eps
    if same_target:
        return "expand", max(radius, distance), None
    return "split", distance / 2, distance / 2


def check_radius_rule(fn) -> None:
    g = torch.Generator().manual_seed(0)
    cases = [(None, 0.0, False, 1.0), (3.0, 1.0, True, 1.0), (1.5, 1.0, True, 1.0), (0.5, 1.0, True, 1.0), (1.5, 1.0, False, 1.0)]
    cases += [(torch.rand(1, generator=g).item() * 4, torch.rand(1, generator=g).item() * 2,
               bool(torch.rand(1, generator=g) < 0.5), 1.0) for _ in range(200)]
    for case in cases:
        assert fn(*case) == radius_rule(*case), (case, fn(*case), radius_rule(*case))
    print(f"check passed on {len(cases)} cases")


check_radius_rule(my_radius_rule)

# %% [markdown]
# ## 3. One edit, up close
# GRACE trains only the new value (Adam, lr 1.0) until the target is predicted. Because the frozen layers below the
# edited one give the same output at every step, minedit computes them once per edit (`minedit.training.UpperStack`).

# %%
request = edits[0]
grace = make_editor("grace", model, tokenizer)
stats = grace.edit(request)
print(request.prompt, "->", request.target)
print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()})
pair = infer.encode_pair(tokenizer, request.prompt, request.target)
print("generate:", repr(tokenizer.decode(infer.generate_greedy(model, [pair.prompt_ids], [4], infer.pad_id(tokenizer))[0])))
rephrase = infer.encode_pair(tokenizer, request.rephrases[0], request.target)
print("rephrase:", request.rephrases[0], "->",
      repr(tokenizer.decode(infer.generate_greedy(model, [rephrase.prompt_ids], [4], infer.pad_id(tokenizer))[0])))
grace.restore()

# %% [markdown]
# ## 4. GRACE as a lifelong editor
# Thirty edits in sequence, then every edit scored on the final model (retention protocol).

# %%
grace = make_editor("grace", model, tokenizer)
run = run_lifelong(grace, edits[:30], RunConfig(progress=False))
grace.restore()  # the next experiments start from the unedited model
assert run.metrics["rel"] >= 0.95 and run.metrics["loc"] >= 0.98
print({k: round(v, 3) for k, v in run.metrics.items()}, f"| {run.seconds_per_edit:.2f} s per edit")
edit_curves(run.rows, title="GRACE, 30 edits, retention");

# %% [markdown]
# Reliability and locality are near perfect: an edit's own query sits at distance 0 from its key, and unrelated
# questions are far from every key. Generality is no better than the unedited model. Why?
#
# ## 5. Why generality is weak: distances in key space
# Compare, for the same edits, the distance from an edit's key to (a) its rephrase's query and (b) the *other*
# edits' keys, and (c) the locality questions.

# %%
name = arch.layer_module_name(model, layer, "mlp_out")


def keys(prompts):
    ids, mask = infer.left_pad([tokenizer(p).input_ids for p in prompts], infer.pad_id(tokenizer))
    with torch.inference_mode(), record(model, [name], point="input") as acts:
        model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return acts[name][:, -1]  # (B, d_ff): the last prompt token


sample = edits[:60]
k_edit = keys([r.prompt for r in sample])
k_reph = keys([r.rephrases[0] for r in sample])
k_loc = keys([r.locality[0].prompt for r in sample])
others = torch.cdist(k_edit, k_edit)[~torch.eye(len(sample), dtype=torch.bool)]
frame = pd.concat([
    pd.DataFrame({"distance": (k_edit - k_reph).norm(dim=-1), "pair": "edit ↔ its rephrase"}),
    pd.DataFrame({"distance": others, "pair": "edit ↔ another edit"}),
    pd.DataFrame({"distance": torch.cdist(k_loc, k_edit).min(-1).values, "pair": "locality ↔ nearest edit"}),
])
ax = sns.histplot(data=frame, x="distance", hue="pair", stat="density", common_norm=False, bins=40, element="step")
ax.axvline(config.eps, color="k", ls="--")
ax.set(title="GRACE key space (layer input at the last prompt token)");

# %%
median_rephrase = (k_edit - k_reph).norm(dim=-1).median().item()
share_closer = (others < median_rephrase).float().mean().item()
print(f"median distance to the rephrase: {median_rephrase:.1f}; {share_closer:.0%} of other-edit keys are closer than that")
assert share_closer > 0.1

# %% [markdown]
# A radius large enough to catch the rephrases would also swallow other edits. Try it: grow `eps`.

# %%
rows = []
for eps in (1.0, 8.0, 32.0):
    editor = make_editor("grace", model, tokenizer, eps=eps)
    r = run_lifelong(editor, edits[:15], RunConfig(progress=False, exact=False))
    actions = [row["stat_action"] for row in r.rows]
    rows.append({"eps": eps, **{k: r.metrics[k] for k in ("rel", "gen", "loc")},
                 "splits": actions.count("split"), "mean radius": editor.codebook.radii.mean().item()})
    editor.restore()
trade = pd.DataFrame(rows)
assert (trade.loc[1:, "splits"] > trade.loc[0, "splits"]).all()  # big balls collide, and split
ax = sns.lineplot(data=trade.melt(id_vars="eps", value_vars=["rel", "gen", "loc"], var_name="metric", value_name="score"),
                  x="eps", y="score", hue="metric", marker="o")
ax.set(xscale="log", title="GRACE deferral radius eps, 15 edits", ylim=(-0.05, 1.05));
trade.round(3)

# %% [markdown]
# Larger balls do not buy generality here: every new edit lands inside an earlier ball with a different answer,
# GRACE splits, and the radii shrink back to half the distance between *edits*, which is smaller than the
# distance to a rephrase.

# %% [markdown]
# **Takeaway.** GRACE makes *discrete*, local edits: perfect for the exact prompt, blind to its rephrases. The
# mixture-of-LoRA editors in notebooks 03 and 04 route on a sequence-level representation instead, so a rephrase
# reaches the same experts.
