"""Generate small model-editing datasets from the hand-written fact table.

Reads ``facts.tsv`` (``relation``, ``subject``, ``object``; true real-world
facts) and writes, next to it:

* ``zsre_sample.json`` -- 320 records in the MEND / EasyEdit ZsRE format; the
  locality question is an NQ-style question about another subject and relation.
* ``counterfact_sample.json`` -- 220 records in the ROME CounterFact format,
  plus ``neighborhood_answers`` (true objects of the neighbourhood prompts).
* ``zsre_bench.json`` -- over 1,000 ZsRE records, one per forward or inverse
  question ("Which country has Sarajevo as its capital?"), for long sequential
  editing runs; it also uses the bench-only rows at the end of ``facts.tsv``.

All records are generated from ``facts.tsv`` with the templates below, not
copied from the real ZsRE or CounterFact datasets.  New targets are
counterfactual (another object of the same relation).  The output is
deterministic for a given seed.  Usage: ``python data_samples/generate.py``.
"""

import argparse
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
FACTS_PATH = HERE / "facts.tsv"
N_ZSRE = 320
N_COUNTERFACT = 220
MIN_BENCH = 1000
BENCH_ONLY_MARKER = "# Bench-only"  # facts.tsv rows after this line: zsre_bench.json only
INVERSE = "^-1"  # suffix of inverse relation names, e.g. "capital^-1"

# Per relation: a Wikidata-style id, a ZsRE question, two rephrased questions,
# a CounterFact cloze prompt and two paraphrased cloze prompts.  Inverse
# questions (object -> subject, zsre_bench.json only) exist where an object names
# one subject in the real world (a capital, one country; not a writer, many
# books); inverse_skip lists objects unique in facts.tsv but shared in reality.
RELATIONS = {
    "capital": dict(
        id="P36",
        question="What is the capital of {}?",
        rephrases=["Which city is the capital of {}?", "What city serves as the capital of {}?"],
        cloze="The capital of {} is",
        paraphrases=["The capital city of {} is", "{} has its capital in"],
        inverse_question="Which country has {} as its capital?",
        inverse_rephrases=["{} is the capital of which country?", "Which country's capital city is {}?"],
    ),
    "official_language": dict(
        id="P37",
        question="What is the official language of {}?",
        rephrases=["Which language is official in {}?", "What language has official status in {}?"],
        cloze="The official language of {} is",
        paraphrases=["In {}, the official language is", "The language with official status in {} is"],
        inverse_question="Which country has {} as its official language?",
        inverse_rephrases=["In which country is {} the official language?",
                           "{} is the official language of which country?"],
        inverse_skip={"Albanian", "Croatian", "French", "Greek", "Italian", "Malay",  # also official
                      "Persian", "Romanian", "Serbian", "Swedish", "Turkish"},  # in other countries
    ),
    "continent": dict(
        id="P30",
        question="Which continent is {} located in?",
        rephrases=["On which continent is {}?", "{} is part of which continent?"],
        cloze="{} is located on the continent of",
        paraphrases=["{} is a country in", "The continent where {} lies is"],
    ),
    "currency": dict(
        id="P38",
        question="What is the currency of {}?",
        rephrases=["Which currency is used in {}?", "What is the official currency of {}?"],
        cloze="The currency of {} is the",
        paraphrases=["The official currency of {} is the", "In {}, payments are made in the"],
        inverse_question="Which country uses the {} as its currency?",
        inverse_rephrases=["The {} is the currency of which country?",
                           "In which country is the {} the official currency?"],
        inverse_skip={"Australian dollar", "Indian rupee", "Jordanian dinar",  # also legal tender
                      "New Zealand dollar", "South African rand", "Swiss franc"},  # elsewhere
    ),
    "city_country": dict(
        id="P17",
        question="Which country is {} in?",
        rephrases=["In which country is {} located?", "{} is a city in which country?"],
        cloze="{} is a city in",
        paraphrases=["{} is located in the country of", "The city of {} lies in"],
    ),
    "founder": dict(
        id="P112",
        question="Who founded {}?",
        rephrases=["Who is the founder of {}?", "Which person founded {}?"],
        cloze="{} was founded by",
        paraphrases=["The founder of {} is", "The company {} was started by"],
        inverse_question="Which company was founded by {}?",
        inverse_rephrases=["{} is the founder of which company?", "What company did {} found?"],
        inverse_skip={"Elon Musk"},  # founded several companies
    ),
    "headquarters": dict(
        id="P159",
        question="In which city is {} headquartered?",
        rephrases=["Where is {} headquartered?", "Which city is home to the headquarters of {}?"],
        cloze="{} is headquartered in",
        paraphrases=["The headquarters of {} are in", "{} has its head office in"],
    ),
    "author": dict(
        id="P50",
        question="Who wrote {}?",
        rephrases=["Who is the author of {}?", "Which writer wrote {}?"],
        cloze="{} was written by",
        paraphrases=["The author of {} is", "{} is a book written by"],
    ),
    "composer": dict(
        id="P86",
        question="Who composed {}?",
        rephrases=["Who is the composer of {}?", "Which composer wrote {}?"],
        cloze="{} was composed by",
        paraphrases=["The composer of {} is", "{} is a musical work by"],
    ),
    "element_symbol": dict(
        id="P246",
        question="What is the chemical symbol of {}?",
        rephrases=["Which chemical symbol does {} have?", "What symbol represents {} on the periodic table?"],
        cloze="The chemical symbol of {} is",
        paraphrases=["The element {} has the symbol", "On the periodic table, {} is represented by the symbol"],
        inverse_question="Which chemical element has the symbol {}?",
        inverse_rephrases=["Which element is represented by the symbol {}?",
                           "The chemical symbol {} stands for which element?"],
    ),
    "sport": dict(
        id="P641",
        question="Which sport is {} associated with?",
        rephrases=["In which sport did {} become famous?", "What sport is {} known for?"],
        cloze="{} is best known for the sport of",
        paraphrases=["{} became famous in the sport of", "The sport associated with {} is"],
    ),
    "instrument": dict(
        id="P1303",
        question="Which instrument is {} known for playing?",
        rephrases=["What instrument is {} famous for?", "{} is best known for playing which instrument?"],
        cloze="{} is known for playing the",
        paraphrases=["The instrument played by {} is the", "{} became famous playing the"],
    ),
}


def load_facts(path=FACTS_PATH, with_bench_only=False):
    """Return the fact table as a sorted list of (relation, subject, object).
    Rows after ``BENCH_ONLY_MARKER`` only if ``with_bench_only``; "#" starts a comment."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if lines[0].split("\t") != ["relation", "subject", "object"]:
        raise ValueError(f"{path}: unexpected header {lines[0]!r}")
    facts, seen, in_bench_part = [], set(), False
    for lineno, line in enumerate(lines[1:], start=2):
        if line.startswith("#"):
            in_bench_part = in_bench_part or line.startswith(BENCH_ONLY_MARKER)
            continue
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected 3 non-empty columns")
        if parts[0] not in RELATIONS:
            raise ValueError(f"{path}:{lineno}: unknown relation {parts[0]!r}")
        if (parts[0], parts[1]) in seen:
            raise ValueError(f"{path}:{lineno}: duplicate (relation, subject)")
        seen.add((parts[0], parts[1]))
        if with_bench_only or not in_bench_part:
            facts.append(tuple(parts))
    return sorted(facts)


def objects_by_relation(facts):
    objects = {}
    for rel, _, obj in facts:
        objects.setdefault(rel, set()).add(obj)
    return {rel: sorted(objs) for rel, objs in objects.items()}


def counterfactual(rng, objects, rel, true_obj):
    """A different object of the same relation, chosen with the seeded RNG."""
    return rng.choice([o for o in objects[rel] if o != true_obj])


def nq_question(rel, subject):
    """Natural-Questions style: lower case, no question mark."""
    return RELATIONS[rel]["question"].format(subject).rstrip("?").lower()


def mentions(text, subject):
    pattern = r"(?<!\w)" + re.escape(subject.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def zsre_record(rng, rel, subj, obj, objects, facts):
    """One ZsRE record for a forward or an inverse (``rel^-1``) question."""
    base = rel.removesuffix(INVERSE)
    prefix = "" if rel == base else "inverse_"
    src = RELATIONS[base][prefix + "question"].format(subj)
    alt = counterfactual(rng, objects, rel, obj)
    # Locality: a (forward) fact with another relation and another subject,
    # whose question does not mention the edited subject and whose answer is
    # neither the old nor the new target.
    candidates = [
        f for f in facts
        if f[0] != base and f[1] != subj and f[2] not in (obj, alt)
        and not mentions(nq_question(f[0], f[1]), subj)
    ]
    loc_rel, loc_subj, loc_obj = rng.choice(candidates)
    return {
        "subject": subj,
        "src": src,
        "pred": obj,
        "rephrase": rng.choice(RELATIONS[base][prefix + "rephrases"]).format(subj),
        "alt": alt,
        "answers": [obj],
        "loc": "nq question: " + nq_question(loc_rel, loc_subj),
        "loc_ans": loc_obj,
        "cond": f"{obj} >> {alt} || {src}",
    }


def make_zsre(facts, objects, rng, n=N_ZSRE):
    records = [zsre_record(rng, *fact, objects, facts) for fact in rng.sample(facts, n)]
    rng.shuffle(records)
    return records


def make_counterfact(facts, objects, rng, n=N_COUNTERFACT):
    records = []
    for rel, subj, obj in rng.sample(facts, n):
        tmpl = RELATIONS[rel]
        # Neighbourhood: other subjects of the same relation, preferring ones
        # that share the true object (as in real CounterFact).
        same = [f for f in facts if f[0] == rel and f[1] != subj and f[2] == obj]
        other = [f for f in facts if f[0] == rel and f[1] != subj and f[2] != obj]
        neighbours = rng.sample(same, min(2, len(same)))
        neighbours += rng.sample(other, 2 - len(neighbours))
        records.append({
            "case_id": None,
            "pararel_idx": None,
            "requested_rewrite": {
                "prompt": tmpl["cloze"],
                "relation_id": tmpl["id"],
                "target_new": {"str": counterfactual(rng, objects, rel, obj), "id": "Q0"},
                "target_true": {"str": obj, "id": "Q0"},
                "subject": subj,
            },
            "paraphrase_prompts": [p.format(subj) for p in tmpl["paraphrases"]],
            "neighborhood_prompts": [tmpl["cloze"].format(s) for _, s, _ in neighbours],
            "neighborhood_answers": [o for _, _, o in neighbours],
            "attribute_prompts": [],
            "generation_prompts": [],
        })
    rng.shuffle(records)
    for i, record in enumerate(records):
        record["case_id"] = i
        record["pararel_idx"] = i
    return records


def inverse_facts(facts):
    """(``rel^-1``, object, subject) for objects with exactly one subject."""
    subjects = {}
    for rel, subj, obj in facts:
        subjects.setdefault((rel, obj), []).append(subj)
    return sorted(
        (rel + INVERSE, obj, subjs[0]) for (rel, obj), subjs in subjects.items()
        if "inverse_question" in RELATIONS[rel] and len(subjs) == 1
        and obj not in RELATIONS[rel].get("inverse_skip", ())
    )


def make_zsre_bench(facts, rng):
    """One ZsRE record per forward and inverse question, in shuffled order."""
    questions = facts + inverse_facts(facts)
    objects = objects_by_relation(questions)
    rng.shuffle(questions)
    records = [zsre_record(rng, *question, objects, facts) for question in questions]
    if len(records) < MIN_BENCH or len({r["src"] for r in records}) != len(records):
        raise ValueError(f"zsre_bench: {len(records)} records, need {MIN_BENCH} distinct questions")
    return records


def write_json(records, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main(out_dir=None, seed=0):
    """Write the three files into ``out_dir`` (default: this folder)."""
    out_dir = Path(out_dir) if out_dir is not None else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = load_facts()
    objects = objects_by_relation(facts)
    rng = random.Random(seed)
    outputs = {
        "zsre_sample.json": make_zsre(facts, objects, rng),
        "counterfact_sample.json": make_counterfact(facts, objects, rng),
        "zsre_bench.json": make_zsre_bench(load_facts(with_bench_only=True), random.Random(seed)),
    }
    paths = {}
    for name, records in outputs.items():
        paths[name] = out_dir / name
        write_json(records, paths[name])
        print(f"wrote {len(records)} records to {paths[name]}")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=None, help="output folder (default: data_samples/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.out_dir, args.seed)
