"""Two description sets side by side, class by class, for comparing prompts or models."""

from __future__ import annotations

import shutil
import textwrap

from pipeline.llm.sets import DescriptionSet

__all__ = ["diff_description_sets"]


def _summary(dset: DescriptionSet) -> str:
    p = dset.provenance
    source = p.get("source", "file")
    if source == "llm":
        template = p.get("template") or {}
        answers = p.get("answers") or {}
        return (
            f"llm {p.get('model')} @ {p.get('base_url_host')}, template {template.get('name')} "
            f"({str(template.get('sha256', ''))[:12]}), {p.get('created')}, "
            f"cached {answers.get('cached')} / new {answers.get('new')}"
        )
    return str(source)


def _column(descriptions: list[str] | None, width: int) -> list[str]:
    if descriptions is None:
        return ["(class absent)"]
    lines = []
    for text in descriptions:
        lines += textwrap.wrap(text, width, initial_indent="- ", subsequent_indent="  ") or ["-"]
    return lines


def diff_description_sets(
    a: DescriptionSet, b: DescriptionSet, label_a: str = "A", label_b: str = "B", width: int | None = None
) -> str:
    """A printable side-by-side comparison; each class is marked same / changed / only in A|B."""
    width = width or max(shutil.get_terminal_size((120, 24)).columns, 60)
    col = (width - 3) // 2
    out = [
        f"A: {label_a}  [{a.name}, id {a.id}]",
        f"   {_summary(a)}",
        f"B: {label_b}  [{b.name}, id {b.id}]",
        f"   {_summary(b)}",
        "",
    ]
    names = list(a.classes) + [n for n in b.classes if n not in a.classes]
    counts = {"same": 0, "changed": 0, "only in A": 0, "only in B": 0}
    for name in names:
        da, db = a.classes.get(name), b.classes.get(name)
        state = "only in B" if da is None else "only in A" if db is None else "same" if da == db else "changed"
        counts[state] += 1
        out.append(f"== {name} ({state}) " + "=" * max(0, width - len(name) - len(state) - 7))
        left, right = _column(da, col), _column(db, col)
        for i in range(max(len(left), len(right))):
            lhs = left[i] if i < len(left) else ""
            rhs = right[i] if i < len(right) else ""
            out.append(f"{lhs:<{col}} | {rhs}".rstrip())
    out.append("")
    out.append("classes: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return "\n".join(out)
