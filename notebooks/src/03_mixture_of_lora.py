# %% [markdown]
# # 03 · From one LoRA to a mixture of LoRA experts
#
# **Objectives.**
# 1. Write the mixture-of-LoRA layer in a few lines, then check that minedit's `MoELoRALinear` computes the same thing.
# 2. Put the layer into SmolLM2 by name and take it out again, bit for bit.
# 3. Route on a *sequence-level* feature and see, in a heatmap, that rephrases of a fact reach the same experts
#    while other facts do not.
# 4. Exercise: top-k routing, checked against minedit's router.
# 5. End with a working mixture editor on the full model (ELDER as published), ready for notebook 04.
#
# **Time budget.** About 40 minutes; the code runs in about 2 minutes on a laptop CPU.

# %%
import logging

import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from minedit import arch, infer
from minedit.data import load_edits
from minedit.editors import make_editor
from minedit.hooks import replace_module
from minedit.models import load_model
from minedit.moe import MeanAndLastHidden, MoELoRALinear, RoutingState, TopKRouter, guided_loss
from minedit.sequence import tracker_for

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
model, tokenizer = load_model("smollm2-135m")
edits = load_edits("zsre:../data_samples/zsre_sample.json")

# %% [markdown]
# ## 1. The layer, by hand
# A LoRA expert adds a low-rank update to a frozen matrix: $\Delta_e(x) = \tfrac{\alpha}{r} B_e A_e x$ with
# $A_e \in \mathbb{R}^{r\times d_{in}}$, $B_e \in \mathbb{R}^{d_{out}\times r}$ ($B_e = 0$ at the start, so a new
# expert changes nothing). A *mixture* keeps $E$ of them and weighs them per input (ELDER, Eq. 1):
#
# $$h = W x + \sum_{e} g_e(s)\, \Delta_e(x),$$
#
# where $g(s)$ comes from a router looking at one vector $s$ for the whole sequence. Here is the whole idea in
# a dozen lines (a simplified version: minedit's class adds sharing, skipping of unused experts, and restore):

# %%
class SimpleMoELoRA(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, n_experts: int, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = torch.nn.Parameter(torch.randn(n_experts, rank, base.in_features) * 0.01)  # (E, r, d_in)
        self.B = torch.nn.Parameter(torch.zeros(n_experts, base.out_features, rank))  # (E, d_out, r)

    def forward(self, x, g):  # x: (B, L, d_in), g: (B, E) routing weights of each sequence
        delta = torch.einsum("bld,erd,eor->bleo", x, self.A, self.B) * self.scale  # (B, L, E, d_out)
        return self.base(x) + (delta * g[:, None, :, None]).sum(2)


# %% [markdown]
# minedit's `MoELoRALinear` wraps the *same* base module and reads its routing weights from a shared
# `RoutingState` (filled once per sequence). Give both the same experts and weights: the outputs agree where the
# sequence's routing decision applies (from the last prompt token on; see `minedit.sequence`).

# %%
layer = arch.default_edit_layer(model)
name = arch.layer_module_name(model, layer, "mlp_out")
base = model.get_submodule(name)
simple = SimpleMoELoRA(base, n_experts=4, rank=8, alpha=16)
with torch.no_grad():
    simple.B.normal_(0, 0.01)  # pretend the experts were trained

state = RoutingState(tracker_for(model))
real = MoELoRALinear(base, state, index=0)
for e in range(4):
    real.add_expert(rank=8, alpha=16)
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
# original back restores the model bit for bit.

# %%
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
# it, go to the same experts. Which vector? Below: for 8 edits, the cosine similarity between features of the
# edit prompt, its rephrase and an unrelated question. The feature is minedit's default for ELDER
# (`MeanAndLastHidden`): the mean of the first layer's output over the prompt (what the prompt is about) next to
# its last token (how it asks).

# %%
def features(prompts, feature):
    tracker = tracker_for(model)
    captured = []
    feature.attach(model, tracker, captured.append)
    try:
        ids, mask = infer.left_pad([tokenizer(p).input_ids for p in prompts], infer.pad_id(tokenizer))
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    finally:
        feature.detach()
        tracker.release()
    return captured[0]  # (B, d)


sample = list(edits[:8])
labels = [f"{i}: edit" for i in range(8)] + [f"{i}: rephrase" for i in range(8)] + [f"{i}: unrelated" for i in range(8)]
prompts = [r.prompt for r in sample] + [r.rephrases[0] for r in sample] + [r.locality[0].prompt for r in sample]
feats = features(prompts, MeanAndLastHidden(0))
sim = F.normalize(feats, dim=-1) @ F.normalize(feats, dim=-1).T
ax = sns.heatmap(pd.DataFrame(sim[:16, :8].numpy(), index=labels[:16], columns=labels[:8]), cmap="viridis", vmin=0.5, vmax=1)
ax.set(title="cosine similarity of sequence features (rows: edits and rephrases)");

# %%
rephrase_to_own = sim[8:16, :8].diagonal()
rephrase_to_other = sim[8:16, :8][~torch.eye(8, dtype=torch.bool)].view(8, 7).max(-1).values
unrelated_to_any = sim[16:, :8].max(-1).values
print(f"rephrase ↔ its edit:   {rephrase_to_own.mean():.3f}")
print(f"rephrase ↔ best other: {rephrase_to_other.mean():.3f}")
print(f"unrelated ↔ best edit: {unrelated_to_any.mean():.3f}")
assert (rephrase_to_own > rephrase_to_other).float().mean() >= 0.75

# %% [markdown]
# ## 4. Exercise: top-k routing
# ELDER's router is a linear layer over the feature, a softmax, and the top-k experts, whose weights are
# renormalised to sum to one (Eq. 2): $g_e = p_e / \sum_{j\in \mathrm{topk}(p)} p_j$ for the chosen experts, 0
# for the rest. Write `my_topk_weights`; the check compares it with `TopKRouter` on random features.

# %%
def my_topk_weights(probs: torch.Tensor, k: int) -> torch.Tensor:
    top, idx = probs.topk(k, dim=-1)  # <- your code here
    return torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))


def check_topk(fn) -> None:
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        router = TopKRouter(16, n_experts=6, k=k, generator=g)
        routing = router(torch.randn(5, 16, generator=g))
        mine = fn(routing.probs, k)
        assert torch.allclose(mine, routing.weights, atol=1e-6), (k, mine, routing.weights)
        assert ((mine > 0).sum(-1) == k).all() and torch.allclose(mine.sum(-1), torch.ones(5))
    print("check passed for k = 1, 2, 3")


check_topk(my_topk_weights)

# %% [markdown]
# ## 5. Teaching the router where facts go: the guided loss
# ELDER gives every edit a *preset* set of experts and trains the router with $-\log p(\text{preset})$. Train a
# router on the 8 edit prompts only (each fact its own pair of experts), then route the **rephrases**, which it
# never saw. The heatmap shows the routing weights.

# %%
router = TopKRouter(feats.shape[1], n_experts=8, k=2, generator=torch.Generator().manual_seed(0))
preset = torch.tensor([[i, (i + 1) % 8] for i in range(8)])  # fact i -> experts {i, i+1}
opt = torch.optim.Adam(router.parameters(), lr=0.05)
for step in range(200):
    opt.zero_grad()
    loss = guided_loss(router(feats[:8]).probs, preset)
    loss.backward()
    opt.step()
with torch.no_grad():
    routed = router(feats[:16])
ax = sns.heatmap(pd.DataFrame(routed.weights.numpy(), index=labels[:16], columns=[f"expert {e}" for e in range(8)]),
                 cmap="mako_r", vmin=0, vmax=1)
ax.set(title="routing weights after guided training (rephrases unseen)");

# %%
same = (routed.chosen[8:] == preset.sort(-1).values).all(-1)
print(f"guided loss {loss.item():.3f}; rephrases routed to their fact's experts: {int(same.sum())}/8")
assert same.float().mean() >= 0.75

# %% [markdown]
# ## 6. A mixture editor on the full model
# minedit's `elder` editor puts these parts together: 8 rank-8 experts on the MLP output of layers 18–20, one
# top-2 router per layer over the sequence feature, the guided loss, and ELDER's deferral gate. Here it is in
# its *published* form (`remedy="none"`), editing one fact; notebook 04 runs it over a lifelong sequence.

# %%
from minedit.metrics import reference_predictions, score_requests

request = edits[0]
reference = reference_predictions(model, tokenizer, [request])
elder = make_editor("elder", model, tokenizer, remedy="none")
stats = elder.edit(request)
score = score_requests(model, tokenizer, [request], reference)[0]
print(f"{request.prompt} -> {request.target}")
print({k: round(v, 3) for k, v in score.items()}, "| experts per layer:", elder.mixture.n_experts())
assert score["rel"] == 1.0
elder.restore()
