# %% [markdown]
# # 06 · LEMoE: a growing pool of frozen experts, KV-anchor routing, and edit order
#
# **Objectives.**
# 1. Run LEMoE (Wang & Li, EMNLP 2024) over a lifelong sequence of edits and see why it does not forget: one new
#    expert per batch of edits, trained on that batch alone, then frozen.
# 2. Write LEMoE's KV-anchor router yourself, use it on the trained editor's real keys, and see where rephrases go.
# 3. Measure *routing consistency*: fixed keys route an edit the same way in training and at inference, forever;
#    a shared routing part that keeps training does not.
# 4. Measure how the order of edits (LEMoE's k-means planning) and the batch size change quality, time and memory.
#
# **Exercise:** KV-anchor routing (⭐⭐, 15 min).
#
# **Time budget.** About 40 minutes; the code runs in about 2 to 3 minutes on one CPU thread.
#
# Prerequisite: notebook 04 (a mixture editor over a lifelong sequence, fresh frozen experts, routing on the
# `mean+last` feature, the similarity gate). The paper has no public code; minedit's `lemoe` editor is the first
# public implementation (`minedit/editors/lemoe.py` says what it chose where the paper is silent).

# %%
import dataclasses
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from minedit import course
from minedit.data import load_edits
from minedit.editors import LemoeConfig, make_editor
from minedit.metrics import reference_predictions, score_requests, summarize
from minedit.models import load_model
from minedit.moe import KeyedRouter
from minedit.planning import edit_features, plan_batches
from minedit.runner import RunConfig, run_lifelong

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub
model, tokenizer = load_model("smollm2-135m")
T, B = 15, 5  # edits, and edits per batch (one new expert each)
edits = list(load_edits(f"zsre:{course.sample_path('zsre_bench.json')}")[:T])  # shuffled: relations mixed, as in life
reference = reference_predictions(model, tokenizer, edits)  # the unedited model's answers, for locality
QUIET = dict(progress=False, latency_prompts=1, latency_repeats=1)  # no progress bar; latency is not studied here
METRICS = ["rel", "gen", "loc", "rel_em", "gen_em"]
TOKEN = ["rel", "gen", "loc"]  # the cheap sweeps score token accuracy only (exact=False)
unedited = summarize(score_requests(model, tokenizer, edits, reference))  # exact match too
print("none (unedited):", {k: round(unedited[k], 3) for k in METRICS})


def state_bytes(editor) -> int:
    """Bytes of everything the editor adds to the model (experts, keys, gate memory)."""
    return sum(t.numel() * t.element_size() for t in editor.state_tensors().values())

# %% [markdown]
# ## 1. Why a growing pool of frozen experts does not forget
# LEMoE puts a bypass beside one decoder layer's whole MLP (Eq. 2): $h = \mathrm{FFN}(x) + \sum_i g(i\mid x)\,
# f_i(x)$, where every $f_i$ is a small FFN expert (the layer and the experts' width are printed below). Edits
# come in **batches**: each batch gets a *new* expert, trained on that batch alone while every earlier expert stays
# frozen. Nothing a later batch does can overwrite an earlier expert: the interference that notebook 04 measured
# in ELDER's shared experts has no way in.
#
# Which expert answers is decided by the router $g$ (section 2) from a sequence feature; minedit routes on
# notebook 03's `mean+last` feature and, like notebook 04's remedy, adds a similarity gate that sends inputs far
# from every edit back to the original model (LEMoE as published has no gate).
#
# We apply 15 edits in batches of 5, in LEMoE's planned order (section 3), and score all edits so far after every
# batch: a retention curve. The first row of every comparison is the unedited model on the same edits (notebook
# 00: its token accuracy is partial credit; exact match says whether an edit is really in).

# %%
editor = make_editor("lemoe", model, tokenizer)
RUN = RunConfig(edit_batch_size=B, plan="kmeans", checkpoints=tuple(range(B, T, B)), **QUIET)  # exact match too
run = run_lifelong(editor, edits, RUN)
curve = pd.DataFrame(run.curve + [{"T": T, **run.metrics}]).set_index("T")  # the last point is the final score
per_edit = pd.DataFrame(run.rows)
router, gate = editor.mixture.routers[0], editor.mixture.gates[0]  # kept for section 2
n_experts, nbytes = editor.mixture.n_experts()[0], state_bytes(editor)  # kept for section 4
c = editor.config
print(f"bypass beside the MLP of layer {editor.layer}, FFN experts of width {c.rank}, top-{c.top_k} routing on "
      f"{c.feature!r} of layer {c.feature_layer}; experts after {T} edits: {n_experts}")
editor.restore()  # the model is unedited again before the next run

# %%
# NBVAL_CHECK_OUTPUT
print("all edits so far, after each batch:")
steps = pd.concat([pd.DataFrame([unedited], index=["none (unedited), all edits"]), curve.rename(index=lambda t: f"after {t} edits")])
print(steps[METRICS].round(3).to_string())
by_expert = per_edit.groupby("stat_expert")[METRICS].mean()
by_expert.index.name = "batch (= expert)"
print("\neach batch's edits, scored on the final model:")
print(by_expert.round(3).to_string())

# %%
plt.figure(figsize=(6.5, 3.5))
ax = sns.lineplot(data=curve.reset_index().melt(id_vars="T", value_vars=METRICS, var_name="metric", value_name="score"),
                  x="T", y="score", hue="metric", style="metric", markers=True)
ax.axhline(unedited["rel"], color="grey", ls=":", lw=1, label="rel, unedited")
ax.set(title="LEMoE: all edits so far, after each batch", xlabel="edits applied", ylim=(-0.05, 1.05), xticks=curve.index)
ax.legend(loc="center left", ncol=3, fontsize=8);

# %% [markdown]
# Read the two tables together. The first batch scored 1.0 on every metric right after it was learnt (the row
# "after 5 edits") and still does after two more batches (batch 0 on the final model): nothing was forgotten. The
# row "after 10 edits" averages batches 0 and 1, so batch 1 then had Gen 0.9 and Gen EM 0.8, exactly what it has
# at the end. What the final model misses (Rel EM 0.933, Gen EM 0.8) is mostly in the *newest* batch, batch 2:
# edits learnt imperfectly when they were trained, not erased later. Locality stays 1.0 throughout.
#
# ## 2. KV-anchor routing
# LEMoE's router (Sec. 3.2, Eq. 3–4) gives every expert a **key** when the expert is created and never trains it.
# A sequence's query $v$ is compared with the keys, $s_i = k_i \cdot v$, and the top-k experts by softmax are
# kept and renormalised (the paper: top-1). The paper's key is one vector per expert and its query the mean token
# embedding through a small projection $v = W_{up}\,\mathrm{SiLU}(W_{down} e)$. minedit's default keeps **one key
# per edit** (the edit's own feature, stored when its batch's expert is created) and uses the feature itself as
# the query (`query_hidden=None`): an expert scores its *best* key.
#
# ### Exercise: KV-anchor routing (⭐⭐, about 15 minutes)
# Write `my_kv_anchor(v, keys, owner, n_experts, k)`: `v` (B, d) are the queries, `keys` (K, d) the fixed keys,
# `owner` (K,) the expert each key belongs to (an expert may hold several keys). Return the (B, E) gates, with
# E = `n_experts`: each expert's score is its best key's dot product $\max_{j:\,owner_j = e} k_j\cdot v$, then the
# softmax over experts, the top `k` kept and renormalised to sum to one, zeros elsewhere (notebook 03's top-k).
# The check compares it with `KeyedRouter` on random keys, several per expert.
#
# *Hint:* `by_key = v @ keys.T` is (B, K); `by_key[:, owner == e].max(-1).values` is expert e's score.

# %%
def my_kv_anchor(v: torch.Tensor, keys: torch.Tensor, owner: torch.Tensor, n_experts: int, k: int) -> torch.Tensor:
    # BEGIN SOLUTION
    by_key = v @ keys.T  # (B, K)
    scores = torch.stack([by_key[:, owner == e].max(-1).values for e in range(n_experts)], dim=-1)  # (B, E)
    top, idx = scores.softmax(-1).topk(k, dim=-1)
    return torch.zeros_like(scores).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    # END SOLUTION


kv_anchor = course.checked(my_kv_anchor, course.check_kv_anchor, fallback=course.kv_anchor_gates)

# %% [markdown]
# ### Your router on the real keys
# Route with *your* function on the keys of section 1's editor. The queries are the routing features of the 15
# edit prompts and of their rephrases, computed as the router sees them (`minedit.planning.edit_features`); the
# similarity gate's verdict is beside.

# %%
feature = editor.routing_feature()  # a new instance of the feature the router reads
v_edit = edit_features(model, tokenizer, edits, feature)  # (T, d): with query_hidden=None the query is the feature
v_rephrase = edit_features(model, tokenizer, [dataclasses.replace(r, prompt=r.rephrases[0]) for r in edits], feature)
own = torch.tensor(per_edit["stat_expert"].tolist())  # the expert that learnt each edit
edit_to = kv_anchor(v_edit, router.keys, router.owner, router.n_experts, 1).argmax(-1)
rephrase_to = kv_anchor(v_rephrase, router.keys, router.owner, router.n_experts, 1).argmax(-1)
deferred = gate.defer(v_rephrase)
routing = pd.DataFrame({"rephrase": [r.rephrases[0] for r in edits], "target": [r.target for r in edits],
                        "edit's expert": own.tolist(), "routed to": rephrase_to.tolist(),
                        "deferred": deferred.tolist(), "gen": per_edit["gen"], "gen_em": per_edit["gen_em"]})
print(f"keys {tuple(router.keys.shape)}: one per edit, owned by experts {sorted(set(router.owner.tolist()))}")

# %%
# NBVAL_CHECK_OUTPUT
print(f"edit prompts routed to their own expert: {int((edit_to == own).sum())}/{T}")
print(f"rephrases routed to their edit's expert: {int((rephrase_to == own).sum())}/{T}; deferred by the gate: {int(deferred.sum())}")
print("the rephrases that are not answered exactly (gen_em 0):")
routing[routing["gen_em"] < 1].set_index("rephrase").round(3)

# %% [markdown]
# Every edit prompt and every rephrase reaches its own edit's expert, and the gate defers none of them. So the
# three rephrases that are not answered exactly are not a routing failure: they reach the expert that learnt their
# fact, and that expert does not carry the fact over to the new wording (one of them even has every target token
# right under teacher forcing, Gen 1.0, and still fails exact match).
#
# ### Routing consistency: fixed keys against a trained query
# The keys are buffers: no optimiser ever sees them. So an edit's query meets the same keys when its expert is
# trained and at every later inference, and a frozen expert is also *reached* exactly as it was: routing is
# consistent. What if a shared routing part keeps training? `query_hidden=64, train_query=True` adds the paper's
# query projection $v = W_{up}\,\mathrm{SiLU}(W_{down} e)$, shared by all experts, and trains it with each new
# batch. After every batch the editor reports `moved_earlier`: the share of earlier edits whose expert changed.
# Same edits, same batches; to save time this run and the sweeps below score token accuracy only (`exact=False`).

# %%
trained_query = make_editor("lemoe", model, tokenizer, query_hidden=64, train_query=True)
run_tq = run_lifelong(trained_query, edits, dataclasses.replace(RUN, checkpoints=(), exact=False))
rows_tq = pd.DataFrame(run_tq.rows)
fresh = KeyedRouter(router.keys.shape[1], 1, 64, torch.Generator().manual_seed(LemoeConfig().seed))  # as it started
drift = [(a - b).norm() / b.norm() for a, b in zip(trained_query.mixture.routers[0].query.parameters(), fresh.query.parameters())]
with torch.no_grad():
    route_now = trained_query.mixture.route(v_edit)[0].chosen[:, 0]  # each edit's expert on the final model
trained_query.restore()

# %%
# NBVAL_CHECK_OUTPUT
moved = rows_tq.groupby("stat_expert")["stat_moved_earlier"].first().iloc[1:]
print("share of earlier edits moved to another expert, after batch:", {int(b): round(m, 3) for b, m in moved.items()})
print("share of each batch routed to its own expert right after its training:",
      rows_tq.groupby("stat_expert")["stat_routed_to_own"].mean().round(3).to_dict())
print("expert each edit routes to on the final model:", route_now.tolist())
print("rel of each batch's edits on the final model:", rows_tq.groupby("stat_expert")["rel"].mean().round(3).to_dict())
print(f"query projection's relative change since it was created: W_down {drift[0]:.3f}, W_up {drift[1]:.3f}")
consistency = pd.DataFrame({"none (unedited)": unedited, "LEMoE, fixed keys (default)": run.metrics,
                            "LEMoE, trained query": run_tq.metrics}).T[TOKEN].astype(float)
consistency.round(3)

# %% [markdown]
# Training the shared query re-routed 20% of the first batch's edits while the second batch trained, and 80% of
# the first two batches' edits while the third did. On the final model every edit routes to expert 2, the newest:
# the third batch keeps Rel 1.0, the first falls to 0.0 and the second to 0.05, because an expert that never
# learnt them now answers them. Overall Rel falls from 1.0 to 0.35 and Gen from 0.9 to 0.283. The experts are as
# frozen as before; what changed is who reaches them. (These figures come from rounding noise, as the next cell
# shows: they were taken with one CPU thread, as `make test` runs; another thread count or CPU moves them.)
#
# Why does the projection move at all? The paper routes top-1, and a top-1 gate renormalised over the kept expert
# is exactly 1, whatever the query: the loss has no gradient for the query. With *your* function on the real keys
# and edit queries:

# %%
# NBVAL_CHECK_OUTPUT
weights = torch.arange(1.0, router.n_experts + 1)  # any fixed use of the gates
for k in (1, 2):
    v = v_edit.clone().requires_grad_(True)
    (kv_anchor(v, router.keys, router.owner, router.n_experts, k) * weights).sum().backward()
    print(f"top-{k}: largest |d loss / d query| = {v.grad.abs().max().item():.6f}")

# %% [markdown]
# Under top-1 the gradient is zero, up to floating-point rounding. Yet the projection moved ($W_{down}$ by
# 5% of its size): Adam divides each step by the gradient's running size, so it turns rounding errors into
# steps of the full learning rate, in directions that mean nothing. Under top-2 the query has a real gradient and
# training moves it on purpose. Either way, whatever is shared and trained can change the routes of edits learnt
# before; fixed keys rule it out: the route an edit was trained through is the route it gets, forever.
#
# ## 3. Edit order: which edits share a batch
# Edits that share a batch share an expert, so LEMoE plans the order (Sec. 3.3): it clusters the pending edits so
# that every batch is about related things. `minedit.planning.plan_batches` runs k-means on the edits'
# unit-length routing features (k = T / batch size clusters, k-means++ seeding), then assigns edits to centroids
# nearest pair first, each centroid taking at most `batch size` edits: equal-size batches. The alternatives are the
# data order (`plan="none"`) and a seeded shuffle (`"random"`). Who shares a batch under each plan, and how alike
# the edits of a batch are (mean cosine similarity of their routing features):

# %%
# NBVAL_CHECK_OUTPUT
unit = F.normalize(v_edit, dim=-1)
plans = {method: plan_batches(v_edit, B, method) for method in ("none", "random", "kmeans")}
share = pd.DataFrame({"prompt": [r.prompt for r in edits]})
for method, batches in plans.items():
    share[method] = [next(b for b, batch in enumerate(batches) if i in batch) for i in range(T)]
    tight = [(unit[batch] @ unit[batch].T)[~torch.eye(len(batch), dtype=torch.bool)].mean() for batch in batches]
    print(f"{method:>6}: within-batch similarity {torch.stack(tight).mean():.3f}")
share.sort_values(["kmeans", "none"]).set_index("prompt")

# %% [markdown]
# k-means gathers the five currency and capital questions into one batch (2) and most questions about books,
# music and sport into another (1); batch 0 holds the rest. But 15 questions over a dozen relations do not fall
# into three tight groups of five: the planned batches are only a little more alike (0.835) than the data
# order's (0.828) or the shuffle's (0.822).
#
# The same edits and batch size, in the three orders (the k-means row is section 1's run):

# %%
order_runs = {"kmeans": run}
for method in ("none", "random"):
    lemoe = make_editor("lemoe", model, tokenizer)
    order_runs[method] = run_lifelong(lemoe, edits, dataclasses.replace(RUN, plan=method, checkpoints=(), exact=False))
    lemoe.restore()

# %%
# NBVAL_CHECK_OUTPUT
order = pd.DataFrame({"none (unedited)": unedited, **{f"plan={m}": order_runs[m].metrics for m in ("none", "random", "kmeans")}}).T
order["routed to own expert"] = [float("nan")] + [pd.DataFrame(order_runs[m].rows)["stat_routed_to_own"].mean()
                                                  for m in ("none", "random", "kmeans")]
order[TOKEN + ["routed to own expert"]].astype(float).round(3)

# %% [markdown]
# On these 15 edits the planned order does **not** win: every order keeps Rel and Loc at 1.0 and routes every
# edit to its own expert, and Gen differs by a rephrase or two (one rephrase is 1/15 ≈ 0.067 of Gen): 0.933 in
# data order, 1.0 shuffled, 0.9 planned. With one key per edit, an edit is reached through its own key whatever
# its batch-mates are, so the order only changes which edits one expert must fit together; at this scale that is
# noise. Planning should matter more where an expert has *one* key for its whole batch (LEMoE as published,
# `keys="batch"`): that key must stand for every edit of the batch, and an edit far from its batch's centre may
# route elsewhere. Try it: `make_editor("lemoe", model, tokenizer, keys="batch")` in the three orders.
#
# ## 4. Batch size: quality, time and memory
# One expert per batch: a smaller batch means more experts (more memory, more keys to compare) and fewer edits
# sharing one. Batches of 1, 5 (section 1's run) and 15 (one expert for everything), all in k-means order. Seconds
# per edit are wall time on this machine; *training passes per edit* (how many optimisation steps each edit's
# prompt went through) is the work itself.

# %%
size_runs = {B: (run, nbytes, n_experts)}
for size in (1, T):  # one expert per edit; one expert for all
    lemoe = make_editor("lemoe", model, tokenizer)
    result = run_lifelong(lemoe, edits, dataclasses.replace(RUN, edit_batch_size=size, checkpoints=(), exact=False))
    size_runs[size] = (result, state_bytes(lemoe), lemoe.mixture.n_experts()[0])
    lemoe.restore()
sizes = pd.DataFrame([{"batch size": size, **{k: r.metrics[k] for k in TOKEN}, "experts": n, "state (KB)": nbytes / 1024,
                       "training passes per edit": sum(row["stat_steps"] for row in r.rows) / T,
                       "seconds per edit": r.seconds_per_edit}
                      for size, (r, nbytes, n) in sorted(size_runs.items())]).set_index("batch size")

# %%
# NBVAL_CHECK_OUTPUT
none_row = pd.DataFrame([{**{k: unedited[k] for k in TOKEN}, "experts": 0, "state (KB)": 0.0, "training passes per edit": 0.0}],
                        index=["none (unedited)"])
pd.concat([none_row, sizes.drop(columns="seconds per edit").rename(index=str)]).rename_axis("batch size").round(3)

# %%
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
quality = sizes[TOKEN].reset_index().melt(id_vars="batch size", var_name="metric", value_name="score")
sns.barplot(data=quality, x="batch size", y="score", hue="metric", ax=axes[0]).set(ylim=(0, 1.3), title="quality")
sns.barplot(x=sizes.index, y=sizes["seconds per edit"], ax=axes[1], color="C4").set(title="seconds per edit (this CPU)", ylabel="")
sns.barplot(x=sizes.index, y=sizes["state (KB)"], ax=axes[2], color="C2").set(title="state (KB)", ylabel="")
axes[0].legend(fontsize=8, loc="upper center", ncol=3)
fig.tight_layout()
print("seconds per edit (wall time, varies by machine):", sizes["seconds per edit"].round(2).to_dict())

# %% [markdown]
# Batches of 1 give the best Gen here (1.0): every edit has an expert of its own and needs only 3.4 training
# passes on average. They also hold the most state, 15 experts in about 8,800 KB against 710 KB for one expert,
# and memory grows by one expert per edit for as long as edits come. Larger batches need more passes per edit
# (22 at 5, 41 at 15: one expert must fit more facts at once), and Gen does not fall steadily with the batch size
# (0.9 at 5, 0.931 at 15: less than one rephrase apart). Rel and Loc stay at 1.0 throughout. Seconds per edit weigh
# the passes against how well a step's fixed costs spread over a batch, and depend on the machine and on what else
# it is running: two runs of this notebook on one busy machine put the three batch sizes in different orders. The
# training passes are the measure that does not move.
#
# ## Summary
# **Measured.** On 15 ZsRE-format edits in batches of 5, LEMoE keeps Rel and Loc at 1.0, with Gen 0.9 and exact
# match 0.933 (Rel) and 0.8 (Gen), where the unedited model has Rel 0.147 and exact match 0. A batch scores after
# later batches exactly what it scored right after its training: what is missed was learnt imperfectly, not
# forgotten. Your KV-anchor router sends every edit prompt and every rephrase to its own edit's expert, so the
# generality that is missed is in what the experts learnt, not in routing. A shared query projection trained with
# each batch re-routes earlier edits (20%, then 80%) and drops Rel to 0.35, although under top-1 the loss gives it
# no gradient. On these edits the planned order does not beat the data order or a shuffle (Gen 0.9 planned,
# 0.933 in data order, 1.0 shuffled); batches of 1 give the best Gen (1.0) at twelve times the state of one batch.
#
# **What it means.** Freezing experts protects what they store; fixed keys protect how they are reached. A
# lifelong mixture needs both, and anything shared that keeps training (a router, a query projection) can undo
# the second. Order and batch size moved Gen by at most 0.1 here, a rephrase or two, while the batch size decided
# the memory; measure order and batch size on more edits before trusting either way.
#
# **Next.** Run it at scale from the repository root: `python -m minedit bench --editor lemoe --data
# zsre:data_samples/zsre_bench.json --edits 100 --edit-batch 10 --plan kmeans` (then `--plan none`), and compare
# with ELDER and GRACE on the same edits.
