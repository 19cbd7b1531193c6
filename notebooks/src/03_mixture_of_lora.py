# %% [markdown]
# # 03 · From one LoRA to a mixture of LoRA experts
#
# **Objectives.**
# 1. Write the mixture-of-LoRA layer yourself, then check that minedit's `MoELoRALinear` computes the same thing
#    inside SmolLM2.
# 2. Put the layer into SmolLM2 by name and take it out again, bit for bit.
# 3. Choose what the router looks at: compare three *sequence-level* features and see that with the chosen one,
#    rephrases of a fact land near it while other facts do not.
# 4. Write top-k routing and ELDER's guided loss, and train a router that sends unseen rephrases to their fact's experts.
# 5. End with a working mixture editor on the full model (ELDER as published), ready for notebook 04.
#
# **Exercises:** the mixture layer (⭐⭐, 15 min); top-k routing (⭐, 10 min); the guided loss (⭐⭐, 10 min).
#
# **Time budget.** About 50 minutes; the code runs in about 1–2 minutes on a laptop CPU.
#
# Prerequisites: notebook 01 (LoRA), 02 (why a per-token key does not generalise).

# %%
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from minedit import arch, course, infer
from minedit.data import load_edits
from minedit.editors import make_editor
from minedit.hooks import replace_module
from minedit.metrics import reference_predictions, score_requests
from minedit.models import load_model
from minedit.moe import (LastTokenHidden, LoRAExpert, MeanAndLastHidden, MeanPooledHidden, MoELoRALinear, RoutingState,
                         TopKRouter, guided_loss, sequence_features)
from minedit.sequence import tracker_for

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub
model, tokenizer = load_model("smollm2-135m")
edits = load_edits(f"zsre:{course.sample_path('zsre_sample.json')}")

# %% [markdown]
# ## 1. Exercise 1: the layer (⭐⭐, about 15 minutes)
# A LoRA expert (notebook 01) adds a low-rank update to a frozen matrix: $\Delta_e(x) = \tfrac{\alpha}{r} B_e A_e x$
# with $A_e \in \mathbb{R}^{r\times d_{in}}$, $B_e \in \mathbb{R}^{d_{out}\times r}$ ($B_e = 0$ at the start, so a
# new expert changes nothing). A *mixture* keeps $E$ of them and weighs them per input (ELDER, Eq. 1):
#
# $$h = W x + \sum_{e} g_e(s)\, \Delta_e(x),$$
#
# where $g(s)$ comes from a router looking at one vector $s$ for the whole sequence, so every token of a sequence
# gets the same weights.
#
# Write `my_moe_lora(x, base, A, B, scale, g)`: `x` is (batch, length, d_in); `base` the frozen Linear; `A`
# (E, r, d_in) and `B` (E, d_out, r) hold the E experts' factors; `scale` is α/r; `g` (batch, E) the routing
# weights of each sequence. Return $h$, (batch, length, d_out). The check compares it with a mixture of
# minedit's `LoRAExpert` modules on random experts and weights.
#
# *Hint:* `torch.einsum("bld,erd->bler", x, A)` applies every expert's `A` to every token; a second einsum with
# `B` and a third with `g` finish the sum (or loop over the experts, then vectorise).

# %%
def my_moe_lora(x: torch.Tensor, base: torch.nn.Module, A: torch.Tensor, B: torch.Tensor, scale: float,
                g: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    low = torch.einsum("bld,erd->bler", x, A)  # (B, L, E, r): every expert's A x
    delta = torch.einsum("bler,eor->bleo", low, B) * scale  # (B, L, E, d_out): every expert's update
    return base(x) + torch.einsum("bleo,be->blo", delta, g)
    # END SOLUTION


moe_lora = course.checked(my_moe_lora, course.check_moe_lora, fallback=course.moe_lora)

# %% [markdown]
# The whole idea as a module, around your function (a simplified version: minedit's class adds sharing, skipping
# of unused experts, and restore):

# %%
class SimpleMoELoRA(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, n_experts: int, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = torch.nn.Parameter(torch.randn(n_experts, rank, base.in_features) * 0.01)  # (E, r, d_in)
        self.B = torch.nn.Parameter(torch.zeros(n_experts, base.out_features, rank))  # (E, d_out, r)

    def forward(self, x, g):  # x: (B, L, d_in), g: (B, E) routing weights of each sequence
        return moe_lora(x, self.base, self.A, self.B, self.scale, g)


# %% [markdown]
# minedit's `MoELoRALinear` wraps the *same* base module (SmolLM2's MLP output projection of layer 20) and reads
# its routing weights from a shared `RoutingState` (filled once per sequence). Give both the same experts and
# weights: the outputs agree where the sequence's routing decision applies (from the last prompt token on; see
# `minedit.sequence`).

# %%
# NBVAL_CHECK_OUTPUT
layer = arch.default_edit_layer(model)
name = arch.layer_module_name(model, layer, "mlp_out")
base = model.get_submodule(name)
simple = SimpleMoELoRA(base, n_experts=4, rank=8, alpha=16)
with torch.no_grad():
    simple.B.normal_(0, 0.01)  # pretend the experts were trained

state = RoutingState(tracker_for(model))
real = MoELoRALinear(base, state, index=0, d_in=base.in_features, d_out=base.out_features)
for e in range(4):
    real.add(LoRAExpert(base.in_features, base.out_features, rank=8, alpha=16))
    with torch.no_grad():
        real.experts[e].A.copy_(simple.A[e])
        real.experts[e].B.copy_(simple.B[e])

x = torch.randn(2, 5, base.in_features)
g = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])  # two sequences, two experts each
state.weights[0] = g
with torch.no_grad():
    out_simple, out_real = simple(x, g), real(x)
# The routing decision is made at the last prompt token, so minedit applies the experts from there on
# (and to every generated token); earlier prompt positions keep the base output.
assert torch.allclose(out_simple[:, -1], out_real[:, -1], atol=1e-5)
assert torch.equal(out_real[:, :-1], base(x)[:, :-1])
print("SimpleMoELoRA and minedit's MoELoRALinear agree")

# %% [markdown]
# ## 2. Into the model, and out again
# The wrapper keeps the original module as `base_layer` and is swapped in by name, PEFT-style. Putting the
# original back restores the model bit for bit. (The printout names the class `ExpertLayer`: minedit's mixture
# layer for any kind of expert; `MoELoRALinear` is the same class, named for LoRA experts on a Linear.)

# %%
# NBVAL_CHECK_OUTPUT
before = {k: v.clone() for k, v in model.state_dict().items()}
replace_module(model, name, real)
print(type(model.get_submodule(name)).__name__, "->", real.extra_repr())
replace_module(model, name, base)
after = model.state_dict()
assert all(torch.equal(before[k], after[k]) for k in before)
state.tracker.release()
print("restored bit for bit")

# %% [markdown]
# ## 3. What should the router look at?
# ELDER routes on one vector per *sequence*, not per token, so that all tokens of an input, and a rephrase of
# it, go to the same experts. Which vector? A good one puts a rephrase nearer to its own edit than to any other
# edit. Three candidates (`minedit.moe.features`), for 8 edits, their rephrases and 8 unrelated questions:
# - **last**: a middle layer's output at the last prompt token (what GRACE's key is, one layer up);
# - **mean**: the first layer's output averaged over the prompt (what the prompt is about);
# - **mean+last**: both, each unit length, side by side (ELDER's default in minedit).

# %%
sample = list(edits[:8])
labels = [f"{i}: edit" for i in range(8)] + [f"{i}: rephrase" for i in range(8)] + [f"{i}: unrelated" for i in range(8)]
prompts = [r.prompt for r in sample] + [r.rephrases[0] for r in sample] + [r.locality[0].prompt for r in sample]
ids, mask = infer.left_pad([tokenizer(p).input_ids for p in prompts], infer.pad_id(tokenizer))
batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


def similarity(feats: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(feats, dim=-1)
    return unit @ unit.T  # (24, 24) cosine similarities


rows = []
for label, feature in [("last (layer 12)", LastTokenHidden(12)), ("mean (layer 0)", MeanPooledHidden(0)),
                       ("mean+last (layer 0)", MeanAndLastHidden(0))]:
    sim = similarity(sequence_features(model, batch, feature))
    own = sim[8:16, :8].diagonal()
    other = sim[8:16, :8][~torch.eye(8, dtype=torch.bool)].view(8, 7).max(-1).values
    rows.append({"feature": label, "rephrase ↔ its edit": own.mean().item(), "rephrase ↔ best other edit": other.mean().item(),
                 "rephrases nearer their own edit": f"{int((own > other).sum())}/8",
                 "unrelated ↔ best edit": sim[16:, :8].max(-1).values.mean().item()})
pd.DataFrame(rows).set_index("feature").round(3)

# %% [markdown]
# So, which vector? Not **last**: in a middle layer all last-token states look alike (0.97 to the own edit and
# to the best other edit alike), and 2 of 8 rephrases sit nearer another edit. **mean** and **mean+last** both put
# all 8 rephrases nearest their own edit. mean has the slightly larger margin, but mean+last keeps *unrelated*
# questions further from every edit (0.68 against 0.80), and that distance is what ELDER's gates need to send
# unrelated inputs to the original model (notebook 04). The course routes on mean+last; the heatmap shows it:

# %%
feats = sequence_features(model, batch, MeanAndLastHidden(0))
sim = similarity(feats)
plt.figure(figsize=(7, 5))
ax = sns.heatmap(pd.DataFrame(sim[:16, :8].numpy(), index=labels[:16], columns=labels[:8]), cmap="viridis", vmin=0.5, vmax=1)
ax.set(title="cosine similarity of mean+last features (rows: edits and rephrases)");

# %%
# NBVAL_CHECK_OUTPUT
rephrase_to_own = sim[8:16, :8].diagonal()
rephrase_to_other = sim[8:16, :8][~torch.eye(8, dtype=torch.bool)].view(8, 7).max(-1).values
unrelated_to_any = sim[16:, :8].max(-1).values
print(f"rephrase ↔ its edit:   {rephrase_to_own.mean():.3f}")
print(f"rephrase ↔ best other: {rephrase_to_other.mean():.3f}")
print(f"unrelated ↔ best edit: {unrelated_to_any.mean():.3f}")
assert (rephrase_to_own > rephrase_to_other).float().mean() >= 0.75

# %% [markdown]
# ## 4. Exercise 2: top-k routing (⭐, about 10 minutes)
# ELDER's router is a linear layer over the feature, a softmax, and the top-k experts, whose weights are
# renormalised to sum to one (Eq. 2): $g_e = p_e / \sum_{j\in \mathrm{topk}(p)} p_j$ for the chosen experts, 0
# for the rest. Write `my_topk_weights(probs, k)` from the softmax probabilities `probs` (B, E); the check compares
# it with `TopKRouter`'s weights on random features.
#
# *Hint:* `probs.topk(k, dim=-1)` gives values and indices; `torch.zeros_like(probs).scatter(-1, idx, values)`
# puts values back in place.

# %%
def my_topk_weights(probs: torch.Tensor, k: int) -> torch.Tensor:
    # BEGIN SOLUTION
    top, idx = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    # END SOLUTION


topk_weights = course.checked(my_topk_weights, course.check_topk, fallback=course.topk_weights)

# %% [markdown]
# ## 5. Exercise 3: the guided loss (⭐⭐, about 10 minutes)
# ELDER gives every edit a *preset* set of k experts and trains the router so that exactly those become its top-k:
# the guided loss is $-\log p_e$ for every preset expert $e$, averaged over rows and experts. minedit subtracts the
# constant $\log k$ (the gradient does not change), so the loss is 0 exactly when the router puts all its mass,
# evenly, on the preset. Write `my_guided_loss(probs, preset)` with `probs` (B, E) and `preset` (B, k) expert
# indices; it must return a scalar tensor that gradients flow through.
#
# *Hint:* `probs.gather(-1, preset)` picks the preset probabilities; $-\log p - \log k = -\log(k\,p)$.

# %%
def my_guided_loss(probs: torch.Tensor, preset: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    k = preset.shape[-1]
    return -(probs.gather(-1, preset).clamp_min(1e-12) * k).log().mean()
    # END SOLUTION


guided = course.checked(my_guided_loss, course.check_guided_loss, fallback=guided_loss)

# %% [markdown]
# Now train a router with *your* loss on the 8 edit prompts only (each fact its own pair of experts), then route
# the **rephrases**, which it never saw, with *your* top-k. The heatmap shows the routing weights.

# %%
router = TopKRouter(feats.shape[1], n_experts=8, k=2, generator=torch.Generator().manual_seed(0))
preset = torch.tensor([[i, (i + 1) % 8] for i in range(8)])  # fact i -> experts {i, i+1}
opt = torch.optim.Adam(router.parameters(), lr=0.05)
for step in range(200):
    opt.zero_grad()
    loss = guided(router(feats[:8]).probs, preset)
    loss.backward()
    opt.step()
with torch.no_grad():
    weights = topk_weights(router(feats[:16]).probs, 2)
plt.figure(figsize=(7, 5))
ax = sns.heatmap(pd.DataFrame(weights.numpy(), index=labels[:16], columns=[f"expert {e}" for e in range(8)]),
                 cmap="mako_r", vmin=0, vmax=1)
ax.set(title="routing weights after guided training (rephrases unseen)");

# %%
# NBVAL_CHECK_OUTPUT
chosen = weights[8:].topk(2, dim=-1).indices.sort(-1).values
same = (chosen == preset.sort(-1).values).all(-1)
print(f"guided loss {loss.item():.3f}; rephrases routed to their fact's experts: {int(same.sum())}/8")
assert same.float().mean() >= 0.75

# %% [markdown]
# ## 6. A mixture editor on the full model
# minedit's `elder` editor puts these parts together: 8 rank-8 experts on the MLP output of layers 18–20, one
# top-2 router per layer over the sequence feature, the guided loss, and ELDER's deferral gate. Here it is in
# its *published* form (`remedy="none"`), editing one fact, next to the unedited model on the same fact;
# notebook 04 runs it over a lifelong sequence.

# %%
# NBVAL_CHECK_OUTPUT
request = edits[0]
reference = reference_predictions(model, tokenizer, [request])
unedited = score_requests(model, tokenizer, [request], reference)[0]
elder = make_editor("elder", model, tokenizer, remedy="none")
stats = elder.edit(request)
edited = score_requests(model, tokenizer, [request], reference)[0]
print(f"{request.prompt} -> {request.target} | experts per layer: {elder.mixture.n_experts()}")
assert edited["rel"] == 1.0
elder.restore()
pd.DataFrame({"none (unedited)": unedited, "ELDER (published), 1 edit": edited}).T.round(3)

# %% [markdown]
# ## Summary
# **Measured.** Your mixture layer equals minedit's `MoELoRALinear` inside SmolLM2, and swapping it out restores
# the model bit for bit. Of three sequence features, the last token's state confuses rephrases with other edits;
# the prompt mean and mean+last put all 8 rephrases nearest their own edit, mean+last with unrelated questions
# further away; a router
# trained with your guided loss on 8 edit prompts sends their unseen rephrases to the preset experts. One ELDER
# edit moves the fact (Rel and exact match 1) and its rephrase, and keeps the unrelated question.
#
# **What it means.** A mixture can give every fact its own experts and reach them from a rephrase, which GRACE's
# per-token key could not. One edit is easy; the question is what happens to the earlier edits as more arrive.
#
# **Next.** Notebook 04 runs ELDER over a sequence of edits, mechanism by mechanism, and measures what the
# published form forgets.
