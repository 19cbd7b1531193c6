# %% [markdown]
# # 11 · The routing playground
#
# **Objectives.**
# 1. Look inside one forward pass of an edited model: for any prompt, the answer before and after the edits,
#    which experts fire in each layer with the router's weights, and each gate's decision with its margin.
# 2. Read four kinds of prompt that way after three ELDER edits: an edit's prompt, its rephrase, a neighbouring
#    fact asked in the same words, and an unrelated prompt; say where each one is decided.
# 3. Write the similarity gate's margin yourself and reproduce the inspector's numbers with it.
# 4. See how LEMoE and GRACE decide on the same prompts.
# 5. Play: type your own edit, pick an editor, and ask the edited model anything.
#
# **Exercise:** the similarity gate's margin (⭐, 10 min).
#
# **Time budget.** About 30 minutes, plus as long as you like in the playground; the code runs in about a minute
# on one CPU thread.
#
# Prerequisites: notebooks 02 (GRACE), 03 and 04 (the mixture layer, ELDER's routing and gates) and 06 (LEMoE).
# Everything here is read through `minedit.inspection`: `inspect_prompt(editor, prompt)` returns a small frozen
# record, `plot_weights` draws its router weights.

# %%
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from minedit import course
from minedit.data import EditRequest, load_edits
from minedit.editors import make_editor
from minedit.inspection import inspect_prompt, plot_weights, summary
from minedit.models import load_model
from minedit.moe import SimilarityGate

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="white")
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub
pd.set_option("display.max_colwidth", 60)
model, tokenizer = load_model("smollm2-135m")
zsre = load_edits(f"zsre:{course.sample_path('zsre_sample.json')}")

# %% [markdown]
# ## 1. Three edits with ELDER
# minedit's default ELDER (notebook 04: fresh experts per edit, a cosine router anchored at each edit's feature, the
# Hamming code memory and the similarity gate) on the MLP output of layers 18-20, 8 experts per layer, top-2.
# Each edit is given two experts per layer that no earlier edit trained (its *preset*); `editor.presets` lists them.

# %%
# NBVAL_CHECK_OUTPUT
edits = [zsre[0], zsre[1], zsre[4]]
editor = make_editor("elder", model, tokenizer)
for n, request in enumerate(edits):
    stats = editor.edit(request)
    owned = "; ".join(f"layer {layer}: e{a} e{b}" for layer, (a, b) in zip(editor.layers, editor.presets[n].tolist()))
    print(f"edit {n}: {request.prompt!r} -> {request.target!r} ({stats['steps']} steps) owns {owned}")

# %% [markdown]
# ## 2. Four prompts, one forward pass each
# - the **edit**'s own prompt; its **rephrase** (from the data);
# - a **neighbour**: another fact of the sample asked in exactly the same words, which was *not* edited;
# - an **unrelated** prompt: one of the edit's locality questions (Natural Questions, with their odd prefix).
#
# `inspect_prompt` runs the prompt once to capture the mixture's features (the hooks are gone afterwards), routes
# them with the mixture's own router and gates, and generates the answer twice: with the edits, and with the
# editor's changes suspended (`editor.patches.suspended()` puts the original modules back for a moment: the unedited
# model, bit for bit).

# %%
# NBVAL_CHECK_OUTPUT
prompts = {"edit": edits[0].prompt, "rephrase": edits[0].rephrases[0], "neighbour": zsre[8].prompt,
           "unrelated": edits[0].locality[0].prompt}
inspections = {kind: inspect_prompt(editor, prompt) for kind, prompt in prompts.items()}
for kind, ins in inspections.items():
    fired = " | ".join(" ".join(f"e{e}" for e in layer.fired) or "-" for layer in ins.layers)
    print(f"{kind:<10} {ins.prompt!r}\n{'':<10} before {ins.before!r} -> after {ins.after!r}; "
          f"{'deferred' if ins.deferred else 'fired ' + fired}")

# %%
summary(list(inspections.values())).round(3)

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 2.8), sharey=True)
for ax, (kind, ins) in zip(axes, inspections.items()):
    plot_weights(ins, ax=ax, title=f"{kind}\n{'deferred' if ins.deferred else 'experts fire (outlined)'}")
fig.suptitle("ELDER after 3 edits: the router's weights per layer and expert", y=1.15)
plt.show()

# %% [markdown]
# How to read them. `before` is empty for the three questions: the unedited model ends its turn at once on a bare
# question (notebook 00), so `''` is its answer.
# - The **edit** and its **rephrase** route to edit 0's own experts (e0 and e1 in all three layers, half the weight
#   each), pass both gates and answer *Moscow*: the rephrase generalises because its feature lies next to the edit's.
# - The **unrelated** question is deferred: nothing fires, and its answer is the unedited model's, unchanged. Its
#   heatmap shows that the router still *chose* experts (edit 1's): a top-k router always fills k places, so it is
#   the similarity gate, not the router, that keeps the question away from them.
# - The **neighbour** is the surprise. *What is the capital of Armenia?* was never edited, yet it passes both gates
#   and fires experts, and not even the capital edit's: e2 and e3 belong to edit 1, *the currency of Sweden*, so the
#   model now answers *South African rand*. The routing feature is read at layer 0 (which words the prompt has and
#   how it ends), where a short *What is the X of Y?* question looks more like *What is the currency of Sweden?* than
#   like the longer *What is the capital of Bosnia and Herzegovina?*. A locality failure that a benchmark's unrelated
#   questions would never show.
#
# ## 3. The gates, and their margins
# A gate's **margin** says how far a prompt is from flipping its decision, signed so that a margin ≥ 0 lets the
# experts answer and a margin < 0 defers to the original model:
# - ELDER's **Hamming gate** (Eq. 5) compares the prompt's routing code (the chosen experts of every layer) with
#   every stored edit's code; its margin is `threshold - bits to the nearest code` (threshold 0 here: only a code
#   equal to some edit's passes);
# - the **similarity gate** compares the prompt's feature with every edit's feature; its margin is
#   `cosine to the nearest edit - threshold` (0.85).
#
# The experts answer only if *every* gate passes. The neighbour's gates:

# %%
inspections["neighbour"].gate_table().round(3)

# %% [markdown]
# ## 4. Exercise: the similarity gate's margin (⭐, about 10 minutes)
# Write `my_similarity_margin(features, edit_features, threshold)`: `features` (B, d) are the prompts' routing
# features, `edit_features` (N, d) the features of the N edits as they were captured (any length: the gate compares
# directions), `threshold` a float. Return a (B,) tensor: each prompt's cosine similarity to its *nearest* edit,
# minus `threshold`. A gate that holds no edit yet (N = 0) has similarity -1 for every prompt (everything defers).
# The check compares your function with `SimilarityGate` on seeded features of mixed norms.
#
# *Hint:* `F.normalize(x, dim=-1)` makes rows unit length; a matrix product of unit rows is a matrix of cosines.

# %%
def my_similarity_margin(features: torch.Tensor, edit_features: torch.Tensor, threshold: float) -> torch.Tensor:
    # BEGIN SOLUTION
    if len(edit_features) == 0:
        return torch.full((len(features),), -1.0 - threshold)
    cos = F.normalize(features.float(), dim=-1) @ F.normalize(edit_features.float(), dim=-1).T  # (B, N)
    return cos.max(-1).values - threshold
    # END SOLUTION


similarity_margin = course.checked(my_similarity_margin, course.check_similarity_margin, fallback=course.similarity_margin)

# %% [markdown]
# Your function on the real thing: the routing feature of each of the four prompts (captured with
# `mixture.capture()`, one forward pass) against the three edits' features, which ELDER keeps in `editor.features`.
# It must give the inspector's margins.

# %%
# NBVAL_CHECK_OUTPUT
gate = next(g for g in editor.mixture.gates if isinstance(g, SimilarityGate))
for kind, ins in inspections.items():
    with editor.mixture.capture() as features, torch.no_grad():
        model(**tokenizer(ins.prompt, return_tensors="pt"))
    mine = similarity_margin(features["text"], editor.features, gate.threshold).item()
    reported = next(g.margin for g in ins.gates if g.gate == "SimilarityGate")
    assert abs(mine - reported) < 1e-4
    print(f"{kind:<10} similarity margin {mine:+.2f} -> {'defers' if mine < 0 else 'passes'}")
editor.restore()

# %% [markdown]
# ## 5. The same prompts through LEMoE and GRACE
# LEMoE (notebook 06) puts one FFN expert per batch beside the last layer's MLP, routed top-1 by fixed keys, with
# the same similarity gate by default; here each edit is its own batch, so each gets its own expert. GRACE (notebook
# 02) keeps one codebook key per edit at layer 20: its "router" is the nearest key and its gate the key's radius
# (margin `radius - distance`).

# %%
# NBVAL_CHECK_OUTPUT
by_editor = {"elder": inspections}
for name in ("lemoe", "grace"):
    other = make_editor(name, model, tokenizer)
    for request in edits:
        other.edit(request)
    by_editor[name] = {kind: inspect_prompt(other, prompt) for kind, prompt in prompts.items()}
    other.restore()
for kind in prompts:
    print(f"{kind:<10}" + "".join(f"  {name}: {'deferred' if found[kind].deferred else repr(found[kind].after)}"
                                   for name, found in by_editor.items()))

# %%
deciding = {"elder": "SimilarityGate", "lemoe": "SimilarityGate", "grace": "GRACE radius"}
meaning = {"SimilarityGate": "cosine to the nearest edit - 0.85", "GRACE radius": "radius - distance to the nearest key"}
fig, axes = plt.subplots(1, 3, figsize=(13, 2.8), sharey=True)
for ax, (name, found) in zip(axes, by_editor.items()):
    call = {kind: next(g for g in ins.gates if g.gate == deciding[name]) for kind, ins in found.items()}
    margin = [c.margin for c in call.values()]
    ax.barh(list(call), margin, color=["tab:blue" if m >= 0 else "tab:red" for m in margin])
    ax.axvline(0, color="black", lw=1)
    ax.set(title=f"{name}: {deciding[name]}", xlabel=meaning[deciding[name]])
axes[0].invert_yaxis()
fig.suptitle("the deciding gate's margin (red: deferred)", y=1.04)
plt.show()

# %% [markdown]
# Three editors, three ways of deciding:
# - **LEMoE** reads the same feature at the same layer as ELDER and has the same similarity gate, so its margins are
#   ELDER's to the digit, and it makes the same mistake: its router sends the neighbour to edit 1's expert too.
# - **GRACE** keys each edit on one vector, the input of layer 20's MLP output at the last prompt token, and answers
#   only inside a radius of 1 around it. The edit hits its key at distance 0; the rephrase misses it by a wide
#   margin and gets the unedited answer, and so does the neighbour. GRACE keeps locality by answering nothing but
#   the edit's own words, which is why its Gen is low (notebook 02); the mixtures generalise, and pay for it near
#   the edits.
#
# ## 6. The playground
# Type a fact edit (a prompt and its new answer), pick an editor, **Apply**; then type any prompt and **Inspect**:
# the answers before and after, the routing table, the gates and the heatmap. **Reset** restores the model. Applying
# with another editor than the current one starts over with the new editor (one editor edits the model at a time).
#
# The three functions below are what the buttons call, so the static run underneath (stored with the notebook) is
# exactly what the playground shows for one edit and one query.

# %%
playground = {"editor": None, "edits": []}


def apply_edit(editor_name: str, prompt: str, answer: str) -> None:
    """The Apply button: one more edit with ``editor_name`` (another editor than the current one starts over)."""
    current = playground["editor"]
    if current is not None and current.name != editor_name:
        reset()
    if playground["editor"] is None:
        playground["editor"] = make_editor(editor_name, model, tokenizer)
    stats = playground["editor"].edit(EditRequest(prompt, answer))
    playground["edits"].append((prompt, answer))
    print(f"{editor_name}: {len(playground['edits'])} edit(s); the last took {stats.get('steps', '?')} steps")


def reset() -> None:
    """The Reset button: every edit undone, the model exactly as loaded."""
    if playground["editor"] is not None:
        playground["editor"].restore()
    playground["editor"], playground["edits"] = None, []


def show(query: str) -> None:
    """The Inspect button: answers, routing, gates and the heatmap for ``query``."""
    if playground["editor"] is None:
        print("no edit yet: apply one first")
        return
    ins = inspect_prompt(playground["editor"], query)
    print(f"{ins.prompt!r}\nbefore: {ins.before!r}\nafter:  {ins.after!r}\n"
          f"{'deferred: the original model answers' if ins.deferred else 'the edit answers'}")
    display(ins.table())
    display(ins.gate_table().round(3))
    if ins.layers:
        plot_weights(ins)
        plt.show()


print("static view: one ELDER edit, then its rephrase")
apply_edit("elder", "What is the capital of Peru?", "Oslo")
show("Which city is the capital of Peru?")

# %% [markdown]
# The playground itself needs a running kernel (JupyterLab, `make lab`); without `ipywidgets` the cells above are
# its static version: change the arguments of `apply_edit` and `show` and run them again.

# %%
try:
    import ipywidgets as widgets
except ImportError:
    widgets = None
    print("ipywidgets is not installed: use apply_edit / reset / show above (the static version of the playground)")

if widgets is not None:
    wide = widgets.Layout(width="520px")
    prompt_box = widgets.Text(value="What is the capital of Peru?", description="edit prompt", layout=wide)
    answer_box = widgets.Text(value="Oslo", description="new answer")
    editor_menu = widgets.Dropdown(options=["elder", "lemoe", "grace", "wise"], value="elder", description="editor")
    query_box = widgets.Text(value="Which city is the capital of Peru?", description="query", layout=wide)
    apply_button, reset_button = widgets.Button(description="Apply"), widgets.Button(description="Reset")
    inspect_button, out = widgets.Button(description="Inspect", button_style="primary"), widgets.Output()

    def on_apply(_):
        with out:
            out.clear_output()
            apply_edit(editor_menu.value, prompt_box.value, answer_box.value)
            show(query_box.value)

    def on_reset(_):
        with out:
            out.clear_output()
            reset()
            print("model restored: no edit")

    def on_inspect(_):
        with out:
            out.clear_output()
            show(query_box.value)

    apply_button.on_click(on_apply)
    reset_button.on_click(on_reset)
    inspect_button.on_click(on_inspect)
    display(widgets.VBox([widgets.HBox([prompt_box, answer_box]), widgets.HBox([editor_menu, apply_button, reset_button]),
                          widgets.HBox([query_box, inspect_button]), out]))

# %% [markdown]
# ## What to try
# - **Rephrase until it breaks.** Apply one edit and ask it in more and more distant words. Which gate gives way
#   first for ELDER, the code or the similarity? Does GRACE ever answer a rephrase?
# - **Neighbours.** Edit *"What is the capital of Peru?"* and ask about Chile, Peru's currency, Lima. Which of them
#   reach the edit's experts, and what do the margins say about how close they came?
# - **Two edits that look alike.** Edit the capitals of two countries. Does each prompt fire its own experts, and
#   how much weight does the other edit's expert get in the heatmap?
# - **Top-1 versus top-2.** With LEMoE (top-1) the router's whole weight goes to one expert; with ELDER (top-2) it
#   is shared. Which editor's routing tells you more about *why* a prompt was routed the way it was?
# - **WISE.** Its gate is an activation score against a threshold eps that follows the memory's weakest edit: apply
#   a few edits and watch eps and the unrelated prompts' scores.
#
# ## Summary
# **Measured.** After three ELDER edits, the edit's prompt and its rephrase fire that edit's two experts in every
# layer and answer the new target (similarity margins +0.15 and +0.13); an unrelated question is deferred (margin
# -0.16) and keeps its answer; a neighbouring, never-edited question in the same words passes both gates by +0.05 and
# fires *another* edit's experts, so it answers that edit's target. ELDER's Hamming gate passes all four at 0 bits:
# with fresh anchored experts every prompt routes exactly like some edit. LEMoE, on the same feature and gate, decides
# the same way; GRACE answers the edit only, deferring its rephrase and the neighbour alike.
#
# **What it means.** Where a prompt goes is decided once, by one feature, before the experts run; a gate's margin
# says how close that decision was. Locality measured on unrelated questions can be perfect while neighbours of the
# edits, the prompts most likely to be asked next, are answered by the wrong expert.
#
# **Next.** Find the neighbours that break your editor in the playground, then try a feature from a later layer
# (`make_editor("elder", ..., feature="mean", feature_layer=10)`) or a gate of your own (notebook 09's
# `register_gate`) and see whether the neighbour's margin turns negative while the rephrase's stays positive.
