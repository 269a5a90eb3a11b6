"""The Markdown table of ``ablation_digit_scenes.py``: one row per configuration (and its
offsets-zeroed control), one column per split and metric, mean +- std over seeds in percent."""

from __future__ import annotations

import statistics


def _fmt(values: list[float], per_seed: bool = False) -> str:
    """Percent: ``mean ± std`` over seeds (and each seed's value, in seed order)."""
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    text = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    return text + f" ({' / '.join(f'{v:.1f}' for v in values)})" if per_seed else text


def print_table(
    results: dict[str, list[dict]], splits: list[str], metrics: list[str], per_seed: bool = False
) -> str:
    """Markdown: one row per configuration (and its zeroed-offset control), one column per
    (split, metric)."""
    head = ["model", "seeds", "steps", "train s"] + [f"{s} {m}" for s in splits for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        for suffix in ("", " zeroed"):
            if not all(s + suffix in r["scores"] for r in runs for s in splits):
                continue
            row = [name + (" (offsets zeroed)" if suffix else ""), str(len(runs))]
            row.append(str(round(statistics.mean(r["info"]["steps"] for r in runs))))
            row.append(f"{statistics.mean(r['info']['train_seconds'] for r in runs):.0f}")
            for s in splits:
                for m in metrics:
                    scores = [r["scores"][s + suffix] for r in runs]
                    missing = [k for k in scores if m not in k]
                    if missing:
                        raise ValueError(
                            f"metric {m!r} is not among the scores of {name!r}: "
                            f"{sorted(missing[0])}"
                        )
                    row.append(_fmt([k[m] for k in scores], per_seed))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
