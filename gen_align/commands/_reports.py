"""What a batch command (``encode``, ``fid``) tells the user about the items it left out."""

from __future__ import annotations


def report_skipped(skipped: list[dict[str, str]], where: str, shown: int = 10) -> str:
    """The bad items a run left out: how many, the first ``shown`` with their reasons, where the full list is."""
    lines = [f"skipped {len(skipped)} bad item(s) (rerun after fixing them; --strict stops at the first):"]
    lines += [f"  {s['id']} ({s['modality']}): {s['error'].splitlines()[0]}" for s in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more")
    lines.append(f"the full list is in {where}")
    return "\n".join(lines)
