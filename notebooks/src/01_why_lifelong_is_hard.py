# %% [markdown]
# # 01 · Why lifelong editing is hard: fine-tuning and LoRA, edit after edit
#
# **Objectives.**
# 1. Make one edit with FT-L (fine-tune one MLP matrix) and with LoRA (through `peft`), and watch what else changes.
# 2. Apply a sequence of edits and measure Rel / Gen / Loc against the number of edits T under both protocols:
#    *immediate* (score each edit right after it) and *retention* (score all edits on the final model).
# 3. See forgetting and locality collapse on concrete prompts.
# 4. Exercise: FT-L's norm constraint, checked against minedit's editor.
#
# **Time budget.** About 30 minutes; the code runs in about 2–3 minutes on a laptop CPU.

# %%
import logging

import pandas as pd
import seaborn as sns
import torch

from minedit import infer
from minedit.data import EditRequest, load_edits
from minedit.editors import make_editor
from minedit.models import load_model
from minedit.runner import RunConfig, run_lifelong

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
model, tokenizer = load_model("smollm2-135m")
edits = load_edits("zsre:../data_samples/zsre_sample.json")


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
# Edit: *The Eiffel Tower is located in the city of* → **Rome**. The first two probes should change (the second is a
rephrase); the Louvre, France and Germany should not.

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

# %% [markdown]
# Both editors move the target, and both leak: the update to a shared weight matrix is not specific to the
# Eiffel Tower, so neighbouring facts (Paris, France) drift towards *Rome* too. Locality is measured on unrelated
# prompts precisely to catch this.
#
# ## 2. A sequence of edits
# Now 20 ZsRE-format edits, one after another, never rolled back. One run gives both protocols: the
# *immediate* score of each edit right after it, and at checkpoints T = 5, 10, 20 the *retention* score of all
# edits so far on the current model.

# %%
T = 20
curves, runs = [], {}
for name in ("ft", "lora"):
    editor = make_editor(name, model, tokenizer)
    run = run_lifelong(editor, edits[:T], RunConfig(protocol="immediate", checkpoints=(1, 5, 10, 20), progress=False, exact=False))
    runs[name] = (editor, run)
    rows = pd.DataFrame(run.rows)
    for t in (1, 5, 10, 20):
        imm = rows[rows["index"] < t][["rel", "gen", "loc"]].mean()
        curves += [{"editor": name, "T": t, "protocol": "immediate", "metric": m, "score": imm[m]} for m in ("rel", "gen", "loc")]
    for point in run.curve:
        curves += [{"editor": name, "T": point["T"], "protocol": "retention", "metric": m, "score": point[m]} for m in ("rel", "gen", "loc")]
    if name == "ft":  # keep the FT-edited model for section 3, then undo it before LoRA
        forgotten_ft = answers([r.prompt for r in edits[:5]])
        locality_ft = answers([r.locality[0].prompt for r in edits[:5]])
    editor.restore()
curves = pd.DataFrame(curves)
grid = sns.relplot(data=curves, x="T", y="score", hue="metric", style="protocol", col="editor", kind="line", marker="o",
                   height=3.2, aspect=1.2)
grid.set(ylim=(-0.05, 1.05));

# %%
summary = curves[curves["T"] == T].pivot_table(index=["editor", "protocol"], columns="metric", values="score")
assert (summary.xs("retention", level="protocol")["rel"] < summary.xs("immediate", level="protocol")["rel"]).all()
summary.round(3)

# %% [markdown]
# Right after each edit the editors look fine (immediate Rel is high). On the final model most early edits are
# gone (retention Rel falls as T grows): every edit moves the *same* parameters, so the next edits overwrite the
# earlier ones. Locality falls too: the shared weights drift away from the original model.
#
# ## 3. On concrete prompts
# After 20 FT edits, the first five edit prompts and their unrelated locality questions:

# %%
pd.DataFrame({
    "edit prompt": [r.prompt for r in edits[:5]], "edit target": [r.target for r in edits[:5]],
    "FT model after 20 edits": forgotten_ft,
    "locality question": [r.locality[0].prompt for r in edits[:5]],
    "unedited answer": answers([r.locality[0].prompt for r in edits[:5]]),
    "after 20 FT edits": locality_ft,
})

# %% [markdown]
# ## 4. Exercise: FT-L's norm constraint
# FT-L (Zhu et al. 2020) keeps the tuned matrix inside an L∞ ball around the original weights:
# after each optimiser step, every entry is clipped to `[w0 - δ, w0 + δ]`. Write the projection. The check
# applies it to random matrices, and then asserts that minedit's `ft` editor, run with `norm_constraint=δ`,
# leaves its weight exactly inside that ball (your projection leaves it unchanged).

# %%
def my_project(weight: torch.Tensor, original: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(weight, original - delta), original + delta)  # <- your code here


def check_projection(fn) -> None:
    g = torch.Generator().manual_seed(0)
    w0, w = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.equal(fn(w, w0, 0.1), torch.clamp(w, w0 - 0.1, w0 + 0.1))
    editor = make_editor("ft", model, tokenizer, norm_constraint=1e-3)
    name = editor.param_name
    original = model.get_parameter(name).detach().clone()
    editor.edit(eiffel)
    edited = model.get_parameter(name).detach().clone()
    editor.restore()
    assert not torch.equal(edited, original), "the edit changed nothing"
    assert torch.equal(fn(edited, original, 1e-3), edited), "the editor left the L-inf ball"
    print(f"check passed: max |W - W0| = {(edited - original).abs().max():.1e} <= 1e-3")


check_projection(my_project)

# %% [markdown]
# **Takeaway.** Editing by moving shared weights is fast and works *once*. In the lifelong setting it forgets
# earlier edits and damages unrelated knowledge. Notebook 02 keeps every edit in its own slot instead (GRACE).
