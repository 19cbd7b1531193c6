# %% [markdown]
# # 01 · Why lifelong editing is hard: fine-tuning and LoRA, edit after edit
#
# **Objectives.**
# 1. Make one edit with FT-L (fine-tune one MLP matrix) and with LoRA (a low-rank adapter, through `peft`), and
#    watch what else changes.
# 2. Apply a sequence of edits and measure Rel / Gen / Loc (token accuracy and exact match) against the number of
#    edits T under both protocols: *immediate* (score each edit right after it) and *retention* (score all edits
#    on the final model), next to the unedited model.
# 3. See forgetting and locality damage on concrete prompts.
#
# **Exercise:** FT-L's norm constraint, the L∞ projection (⭐, 5 min).
#
# **Time budget.** About 30 minutes; the code runs in about 2–3 minutes on a laptop CPU.
#
# Prerequisite: notebook 00 (the metrics, the `nq question:` prefix of locality prompts, the unedited baseline).

# %%
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from minedit import course, infer, metrics
from minedit.data import EditRequest, load_edits
from minedit.editors import make_editor
from minedit.models import load_model
from minedit.runner import RunConfig, run_lifelong

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub
model, tokenizer = load_model("smollm2-135m")
edits = load_edits(f"zsre:{course.sample_path('zsre_sample.json')}")


def answers(prompts, n=4):
    """The model's greedy continuation of each prompt (first line)."""
    ids = [tokenizer(p).input_ids for p in prompts]
    out = infer.generate_greedy(model, ids, [n] * len(ids), infer.pad_id(tokenizer))
    return [tokenizer.decode(o, skip_special_tokens=True).strip().split("\n")[0] for o in out]


PROBES = ["The Eiffel Tower is located in the city of", "Where is the Eiffel Tower? It is in",
          "The Louvre is located in the city of", "The capital of France is", "The capital of Germany is"]
before = answers(PROBES)
pd.DataFrame({"prompt": PROBES, "unedited": before})

# %% [markdown]
# ## 1. One edit, and its side effects
# Two ways to move a fact by gradient descent on the edit's target tokens:
# - **FT-L** (Zhu et al. 2020) fine-tunes one full weight matrix, here the MLP output projection `W` of layer 20
#   (576 × 1536), keeping it close to the original (section 4).
# - **LoRA** (Hu et al. 2021) freezes `W` and learns a *low-rank* update beside it:
#   $h = W x + \tfrac{\alpha}{r} B A x$ with $A \in \mathbb{R}^{r \times d_{in}}$ random, $B \in \mathbb{R}^{d_{out}
#   \times r}$ zero at the start (so the adapter changes nothing until trained) and a small rank $r$ (here 8):
#   $r(d_{in} + d_{out})$ parameters instead of $d_{in} d_{out}$. minedit's `lora` editor builds it with `peft` on
#   the same layers' MLP projections and keeps training the same adapter edit after edit. Notebook 03 turns one
#   LoRA into a *mixture* of them.
#
# Edit: *The Eiffel Tower is located in the city of* → **Rome**. The first two probes should change (the second is a
# rephrase); the Louvre, France and Germany should not.

# %%
eiffel = EditRequest("The Eiffel Tower is located in the city of", "Rome")
table = {"prompt": PROBES, "unedited": before}
for name in ("ft", "lora"):
    editor = make_editor(name, model, tokenizer)
    stats = editor.edit(eiffel)
    table[f"after one {name} edit"] = answers(PROBES)
    editor.restore()  # bit-exact: the next editor starts from the original model
    assert answers(PROBES[:1]) == before[:1]
pd.DataFrame(table)

# %%
# NBVAL_CHECK_OUTPUT
for name in ("ft", "lora"):
    moved = [p for p, a, b in zip(PROBES, table[f"after one {name} edit"], before) if a != b]
    print(f"{name:4}: {len(moved)} of {len(PROBES)} probes changed: {moved}")

# %% [markdown]
# The two editors fail in opposite directions. FT-L moves the edit prompt and nothing else: not even the
# rephrase follows (no generality), and nothing leaks. LoRA, trained on the same single example, moves the rephrase
# too, and also the Louvre: its update is not specific to the Eiffel Tower, so a neighbouring fact drifts towards
# *Rome*. The capitals keep their answers under both. Generality and locality pull against each other, and
# locality is measured on unrelated prompts precisely to catch the leak.
#
# ## 2. A sequence of edits
# Now 20 ZsRE-format edits, one after another, never rolled back. One run gives both protocols: the
# *immediate* score of each edit right after it, and at checkpoints T = 5 and 20 the *retention* score of all
# edits so far on the current model. The unedited model is the reference row.

# %%
T, CHECKPOINTS = 20, (1, 5, 20)
METRICS = ["rel", "gen", "loc", "rel_em", "gen_em"]
QUIET = dict(progress=False, latency_prompts=1, latency_repeats=1)  # no progress bar; latency is not studied here
unedited_argmax = metrics.reference_predictions(model, tokenizer, edits[:T])  # its argmax on each locality question
unedited = metrics.summarize(metrics.score_requests(model, tokenizer, edits[:T], unedited_argmax))
curves, finals = [], [{"editor": "none (unedited)", "protocol": "-", **{m: unedited[m] for m in METRICS}}]
for name in ("ft", "lora"):
    editor = make_editor(name, model, tokenizer)
    run = run_lifelong(editor, edits[:T], RunConfig(protocol="immediate", checkpoints=CHECKPOINTS, **QUIET))
    rows = pd.DataFrame(run.rows)
    for t in CHECKPOINTS:
        imm = rows[rows["index"] < t][METRICS].mean()
        curves += [{"editor": name, "T": t, "protocol": "immediate", "metric": m, "score": imm[m]} for m in ("rel", "gen", "loc")]
    for point in run.curve:
        curves += [{"editor": name, "T": point["T"], "protocol": "retention", "metric": m, "score": point[m]} for m in ("rel", "gen", "loc")]
    finals.append({"editor": name, "protocol": "immediate", **rows[METRICS].mean().to_dict()})
    finals.append({"editor": name, "protocol": "retention", **{m: run.curve[-1][m] for m in METRICS}})
    if name == "ft":  # keep the FT-edited model for section 3, then undo it before LoRA
        forgotten_ft = answers([r.prompt for r in edits[:5]])
        loc_pairs = [metrics.locality_pairs(tokenizer, r)[0] for r in edits[:T]]
        locality_ft = infer.predict_tokens(model, loc_pairs, infer.pad_id(tokenizer))
    editor.restore()
curves = pd.DataFrame(curves)
grid = sns.relplot(data=curves, x="T", y="score", hue="metric", style="protocol", col="editor", kind="line", marker="o",
                   height=3.2, aspect=1.2)
grid.set(ylim=(-0.05, 1.05));

# %%
# NBVAL_CHECK_OUTPUT
summary = pd.DataFrame(finals).set_index(["editor", "protocol"])
retention, immediate = summary.xs("retention", level="protocol"), summary.xs("immediate", level="protocol")
assert (retention["rel"] < immediate["rel"]).all() and (retention["loc"] < 1).all()
summary.round(3)

# %% [markdown]
# Right after each edit both editors look fine (immediate Rel near 1, and exact too). On the final model many early
# edits are gone: retention Rel falls as T grows, furthest for LoRA, whose one adapter is trained again for every
# edit. Every edit moves the *same* parameters, so later edits overwrite earlier ones. Locality falls too: about
# one in ten unrelated predictions has changed. Compare with the unedited row: its Rel is 0.16 by token accuracy
# and 0 by exact match, so the retained edits are real (FT keeps 30% exactly, LoRA 5%), but far from all.
#
# ## 3. On concrete prompts
# After 20 FT edits, the first five edit prompts and what the FT model now answers:

# %%
pd.DataFrame({"edit prompt": [r.prompt for r in edits[:5]], "edit target": [r.target for r in edits[:5]],
              "FT model after 20 edits": forgotten_ft})

# %% [markdown]
# Two of the five early edits survive in the greedy answer; the others are overwritten by something else.
#
# Locality is scored as notebook 00 defined it: the locality question's answer is teacher-forced, and at each
# answer token the edited model's argmax must equal the **unedited model's** argmax, right or wrong. For these
# `nq question:` prompts (lower case, no question mark, notebook 00) the unedited argmax at the first answer
# position is often `?`: the model would close the question first. Loc does not care; it asks only whether the
# edits changed it. The locality questions of the 20 edits whose argmax tokens changed:

# %%
# NBVAL_CHECK_OUTPUT
reference = [group[0] for group in unedited_argmax]  # the unedited model's argmax, from section 2
show = lambda pred: "|".join(tokenizer.convert_ids_to_tokens(pred.tolist()))
changed = [i for i, (a, b) in enumerate(zip(reference, locality_ft)) if not torch.equal(a, b)]
print(f"{len(changed)} of {T} locality questions have a changed argmax after 20 FT edits")
pd.DataFrame({
    "locality question → answer": [f"{edits[i].locality[0].prompt} → {edits[i].locality[0].answer}" for i in changed],
    "unedited argmax": [show(reference[i]) for i in changed], "after 20 FT edits": [show(locality_ft[i]) for i in changed],
})
#
# ## 4. Exercise: FT-L's norm constraint (⭐, about 5 minutes)
# FT-L keeps the tuned matrix inside an L∞ ball around the original weights: after each optimiser step, every
# entry is clipped to `[w0 - δ, w0 + δ]`. Write the projection `my_project(weight, original, delta)` (return a new
# tensor; do not change `weight` in place). The check tests it on random matrices and then runs minedit's `ft`
# editor with `norm_constraint=1e-3`: the edited weight must already be a fixed point of your projection.
#
# *Hint:* one call of `torch.clamp`, whose bounds may be tensors.

# %%
def my_project(weight: torch.Tensor, original: torch.Tensor, delta: float) -> torch.Tensor:
    # BEGIN SOLUTION
    return torch.clamp(weight, original - delta, original + delta)
    # END SOLUTION


project = course.checked(my_project, course.check_projection, course.project_linf, model, tokenizer)

# %% [markdown]
# A small ball protects locality and limits how far one edit can move the weights, but every edit shares the same
# ball, so it does not stop later edits from overwriting earlier ones.
#
# ## Summary
# **Measured.** One FT-L edit moves only its exact prompt; one LoRA edit also moves the rephrase and leaks to the
# Louvre. Over 20 sequential edits, both editors score near 1 right after each edit but much less on the final
# model (retention Rel 0.63 for FT, 0.37 for LoRA; exact match 0.30 and 0.05), against 0.16 (exact 0) for the
# unedited model, and locality drops to about 0.91.
#
# **What it means.** Editing by moving shared weights is fast and works *once*. In the lifelong setting later edits
# overwrite earlier ones and unrelated knowledge drifts: the immediate protocol hides both.
#
# **Next.** Notebook 02 keeps every edit in its own slot instead (GRACE), and looks at what that costs.
