# %% [markdown]
# # 02 · GRACE: a codebook with a deferral radius
#
# **Objectives.**
# 1. See where GRACE sits in SmolLM2 and what its *key* is: the input of one MLP output projection at the last prompt token.
# 2. Write GRACE's two mechanisms yourself, the codebook lookup and the radius rule (add, expand, split), and check them against minedit's.
# 3. Run GRACE as a lifelong editor and see its profile: reliability and locality near 1, generality at the unedited model's level.
# 4. Measure why: in key space a rephrase lies far outside the radius, and a radius that reached it would also
#    swallow other edits and unrelated questions.
#
# **Exercises:** the codebook lookup (⭐⭐, 10 min); the radius rule (⭐⭐, 10 min).
#
# **Time budget.** About 40 minutes; the code runs in about 2 minutes on a laptop CPU.
#
# Prerequisites: notebook 00 (metrics, the chat template) and 01 (why fine-tuning forgets).

# %%
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from minedit import arch, course, infer
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
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub
model, tokenizer = load_model("smollm2-135m")
edits = load_edits(f"zsre:{course.sample_path('zsre_sample.json')}")

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
# ## 2. Exercise 1: the lookup (⭐⭐, about 10 minutes)
# Write `my_lookup(query, keys, radii)`: `query` is (B, d), one query per sequence; `keys` (K, d) and `radii` (K,)
# are the codebook. For each query return the index of its **nearest** key (Euclidean distance) if the query lies
# within that key's radius (`<=`), else `-1`: a (B,) long tensor. With an empty codebook, every query defers.
#
# *Hint:* `torch.cdist(query, keys)` gives all (B, K) distances; `.min(-1)` gives the nearest key and its
# distance; `torch.where` picks between the index and -1. Only the *nearest* key counts: a farther key with a
# larger radius does not catch the query.

# %%
def my_lookup(query: torch.Tensor, keys: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    if len(keys) == 0:
        return torch.full((len(query),), -1, dtype=torch.long)
    best, idx = torch.cdist(query.float(), keys.float()).min(-1)
    return torch.where(best <= radii[idx], idx, torch.full_like(idx, -1))
    # END SOLUTION


lookup = course.checked(my_lookup, course.check_grace_lookup, fallback=course.grace_lookup)

# %% [markdown]
# ## 3. Exercise 2: the radius rule (⭐⭐, about 10 minutes)
# When an edit arrives, GRACE finds the nearest key at distance `d` with radius `r`:
# - no key yet (`distance is None`), or `d > r + eps`: **add** a key with radius `eps`;
# - otherwise, if that key was trained for the same answer: **expand** its radius so the ball reaches the query
#   (a radius never shrinks when it expands);
# - otherwise (a conflicting answer): **split**: both balls get radius `d / 2` and the new key is added.
#
# Write `my_radius_rule(distance, radius, same_target, eps)`; it returns
# `(action, new radius of the nearest key, radius of the added key or None)`, e.g. `("add", radius, eps)`.
#
# *Hint:* three `return` statements, in the order of the list above.

# %%
def my_radius_rule(distance, radius, same_target, eps):
    # BEGIN SOLUTION
    if distance is None or distance > radius + eps:
        return "add", radius, eps
    if same_target:
        return "expand", max(radius, distance), None
    return "split", distance / 2, distance / 2
    # END SOLUTION


rule = course.checked(my_radius_rule, course.check_radius_rule, fallback=radius_rule)

# %% [markdown]
# ## 4. One edit, up close
# GRACE trains only the new value (Adam, lr 1.0) until the target is predicted. Because the frozen layers below the
# edited one give the same output at every step, minedit computes them once per edit (`minedit.training.UpperStack`).
# The generations below show special tokens as `⏎end`: the end of the model's turn (`<|im_end|>`, notebook 00).

# %%
def say(prompt: str, n: int = 4) -> str:
    ids = infer.generate_greedy(model, [tokenizer(prompt).input_ids], [n], infer.pad_id(tokenizer))[0]
    return repr(tokenizer.decode(ids).replace("<|im_end|>", "⏎end"))


request = edits[0]
print(request.prompt, "->", request.target)
print("before the edit:", say(request.prompt), "| rephrase:", say(request.rephrases[0]))
grace = make_editor("grace", model, tokenizer)
stats = grace.edit(request)
print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()})
print("after the edit: ", say(request.prompt), "| rephrase:", say(request.rephrases[0]))
grace.restore()

# %% [markdown]
# The edit prompt now says *Moscow*. The rephrase does not: its query misses the key's radius, the layer defers to
# the original weights, and the unedited model does what it does after a bare question: it ends its turn.
#
# ## 5. GRACE as a lifelong editor
# Thirty edits in sequence, then every edit scored on the final model (retention protocol), next to the unedited
# model on the same edits.

# %%
grace = make_editor("grace", model, tokenizer)
run = run_lifelong(grace, edits[:30], RunConfig(progress=False, latency_repeats=1))
grace.restore()  # the next experiments start from the unedited model
unedited = run_lifelong(make_editor("none", model, tokenizer), edits[:30], RunConfig(progress=False, latency_repeats=1))
assert run.metrics["rel"] >= 0.95 and run.metrics["loc"] >= 0.98
print(f"GRACE: {run.seconds_per_edit:.2f} s per edit on this machine")
edit_curves(run.rows, title="GRACE, 30 edits, retention");

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({"none (unedited)": unedited.metrics, "GRACE": run.metrics}).T.round(3)

# %% [markdown]
# Reliability and locality are near perfect, by token accuracy and by exact match: an edit's own query sits at
# distance 0 from its key, and unrelated questions are far from every key. Generality is the unedited model's,
# and exact match on the rephrases is 0. Why?
#
# ## 6. Why generality is weak: distances in key space
# Compare, for 60 edits, the distance from an edit's key to (a) its rephrase's query, (b) the *other* edits' keys,
# and (c) the locality questions' queries.

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
plt.figure(figsize=(7, 3.8))
ax = sns.histplot(data=frame, x="distance", hue="pair", stat="density", common_norm=False, bins=40, element="step")
ax.axvline(config.eps, color="k", ls="--")
ax.set(title="GRACE key space (layer input at the last prompt token); dashed: eps");

# %%
# NBVAL_CHECK_OUTPUT
median_rephrase = (k_edit - k_reph).norm(dim=-1).median().item()
share_closer = (others < median_rephrase).float().mean().item()
print(f"median distance to the rephrase: {median_rephrase:.1f} (eps = {config.eps}); "
      f"{share_closer:.0%} of other-edit keys are closer than that")
assert median_rephrase > 4 * config.eps and share_closer > 0.1

# %% [markdown]
# A rephrase is nearer to its own edit than most other edits are, but it is about 8 units away, eight radii, and
# a third of the *other* edits' keys lie nearer than that.
#
# **The trade-off, if balls never collided.** Give every edit's key the same radius and ask, with your lookup,
# how many rephrases land in their own edit's ball (generality), how many locality questions land in *some* ball
# (locality damage), and how many edits' own queries would fall into *another* edit's ball first.

# %%
# NBVAL_CHECK_OUTPUT
rows = []
index = torch.arange(len(sample))
for radius in (1.0, 2.0, 4.0, 8.0, 16.0):
    radii = torch.full((len(sample),), radius)
    hit = lookup(k_reph, k_edit, radii)
    rows.append({"radius": radius, "rephrase → own ball": (hit == index).float().mean().item(),
                 "locality → some ball": (lookup(k_loc, k_edit, radii) >= 0).float().mean().item(),
                 "edit has another key within r": (others.view(len(sample), -1) <= radius).any(-1).float().mean().item()})
balls = pd.DataFrame(rows)
print(balls.round(2).to_string(index=False))

# %%
ax = sns.lineplot(data=balls.melt(id_vars="radius", var_name="query", value_name="share"), x="radius", y="share",
                  hue="query", marker="o")
ax.set(xscale="log", title="60 edits, one radius for every key: what falls inside", ylim=(-0.05, 1.05));

# %% [markdown]
# No radius buys much generality. Even at radius 16 only about a fifth of the rephrases land in their own edit's
# ball (for most, another edit's key is nearer), while unrelated questions start to fall into balls. Long before
# that, from radius 2 on, most edits have another edit's key within reach, and there GRACE's radius rule steps in:
# a new edit inside an earlier ball with another answer **splits** both balls to half their distance. Run it with a
# large `eps`:

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for eps in (1.0, 8.0):
    editor = make_editor("grace", model, tokenizer, eps=eps)
    r = run_lifelong(editor, edits[:15], RunConfig(progress=False, exact=False, latency_repeats=1))
    actions = [row["stat_action"] for row in r.rows]
    rows.append({"eps": eps, **{k: r.metrics[k] for k in ("rel", "gen", "loc")},
                 "splits": actions.count("split"), "mean radius": editor.codebook.radii.mean().item()})
    editor.restore()
trade = pd.DataFrame(rows)
assert trade.loc[1, "splits"] > trade.loc[0, "splits"]  # big balls collide, and split
trade.round(3)

# %% [markdown]
# With `eps = 8` almost every edit lands inside an earlier ball with a different answer, GRACE splits, and the
# radii shrink back to about half the distance between *edits*, far below the distance to a rephrase: generality
# does not move.
#
# ## Summary
# **Measured.** On 30 edits GRACE keeps Rel and Loc near 1 (token accuracy and exact match) at the unedited
# model's generality (0.13, exact match 0); a rephrase's key lies about 8 units from its edit's (eps is 1); even
# balls of radius 16 catch only about a fifth of the rephrases, and unrelated questions with them; a large eps only
# causes splits (14 of 15 edits at eps 8) and generality does not move.
#
# **What it means.** GRACE makes *discrete*, local edits: perfect for the exact prompt, blind to its rephrases,
# because the key is one token's activation and paraphrases move it as far as a different fact does.
#
# **Next.** The mixture-of-LoRA editors of notebooks 03 and 04 route on a sequence-level representation instead, so
# a rephrase can reach the same experts.
