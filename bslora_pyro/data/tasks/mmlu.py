"""MMLU: one task per subject (``mmlu:<subject>``), four lettered choices; local CSV files."""

from __future__ import annotations

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.tasks.base import Row, RowError, TaskSpec, validation_named
from bslora_pyro.data.tasks.fields import prompted_example, require, text_field

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

MMLU_PREFIX = "mmlu:"
MMLU_SPLITS = ("dev", "val", "test")


def _mmlu_local(row: Row, uid: str) -> MultipleChoiceExample:
    """``row`` holds the six CSV cells under key ``"cells"``."""
    cells = row["cells"]
    if len(cells) != 6:
        raise RowError(f"expected 6 columns (question,A,B,C,D,answer), got {len(cells)}")
    answer = cells[5].strip()
    if answer not in ("A", "B", "C", "D"):
        raise RowError(f"answer must be one of A, B, C, D, got {answer!r}")
    choices = tuple(cell.strip() for cell in cells[1:5])
    return prompted_example(uid, cells[0].strip(), choices, "ABCD".index(answer))


def _mmlu_hub(row: Row, uid: str) -> MultipleChoiceExample:
    choices = tuple(str(c).strip() for c in require(row, "choices"))
    answer = require(row, "answer")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise RowError(f"answer {answer!r} is not the index of one of {len(choices)} choices")
    return prompted_example(uid, text_field(row, "question"), choices, answer)


def mmlu_spec(subject: str) -> TaskSpec:
    return TaskSpec(
        name=f"{MMLU_PREFIX}{subject}",
        splits=MMLU_SPLITS,
        local_files={s: f"mmlu/{s}/{subject}_{s}.csv" for s in MMLU_SPLITS},
        local_format="CSV without header: question,A,B,C,D,answer (answer in A-D)",
        hub_path="cais/mmlu",
        hub_config=subject,
        parse_local=_mmlu_local,
        parse_hub=_mmlu_hub,
        **validation_named("val"),
    )
