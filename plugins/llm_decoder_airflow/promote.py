"""Promotion: `<root>/models/champion.json` points at the best run so far.

A run replaces the champion only when its validation loss is lower; the first run with a
finite loss becomes champion. Promoting the same run twice changes nothing (a retried task is
harmless). Losses of different model kinds (MSE to an embedding vs cross-entropy) are not
comparable: then bits per character decide, or the champion stays.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llm_decoder_airflow.files import FileStore, join

log = logging.getLogger(__name__)


def champion_uri(root: str) -> str:
    return join(root, "models", "champion.json")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _compared(new: Mapping[str, Any], champion: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """The metric both runs can be judged by, and the two values."""
    if new.get("model_kind") == champion.get("model_kind"):
        return "val_loss", new.get("val_loss"), champion.get("val_loss")
    return "val_bits_per_char", new.get("val_bits_per_char"), champion.get("val_bits_per_char")


def decide(new: Mapping[str, Any], champion: Mapping[str, Any] | None) -> tuple[str, str]:
    """(decision, reason): decision is promoted, kept, unchanged or skipped."""
    if not _finite(new.get("val_loss")):
        return "skipped", f"the new run has no finite val_loss ({new.get('val_loss')!r})"
    if champion is None:
        return "promoted", "first run: no champion yet"
    if champion.get("run_id") == new.get("run_id"):
        return "unchanged", "this run is already the champion"
    metric, new_value, old_value = _compared(new, champion)
    if not _finite(new_value):
        return "kept", f"{metric} of the new run is missing; models of different kinds are not comparable"
    if not _finite(old_value) or new_value < old_value:
        return "promoted", f"{metric} {new_value:.4f} beats the champion's {old_value}"
    return "kept", f"{metric} {new_value:.4f} does not beat the champion's {old_value:.4f}"


def promote(files: FileStore, root: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Update the champion pointer if this run is better; return the decision for XCom."""
    pointer = champion_uri(root)
    text = files.read_text(pointer)
    champion = json.loads(text) if text else None
    decision, reason = decide(summary, champion)
    log.info(
        "promotion %s: %s (new run %s val_loss=%s; champion %s val_loss=%s)",
        decision,
        reason,
        summary.get("run_id"),
        summary.get("val_loss"),
        champion.get("run_id") if champion else None,
        champion.get("val_loss") if champion else None,
    )
    if decision == "promoted":
        record = {
            "run_id": summary["run_id"],
            "model_kind": summary.get("model_kind"),
            "val_loss": summary["val_loss"],
            "val_bits_per_char": summary.get("val_bits_per_char"),
            "model_uri": summary.get("model_uri"),
            "summary_uri": summary.get("summary_uri"),
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "previous": champion,
        }
        if record["previous"]:
            record["previous"] = {k: v for k, v in champion.items() if k != "previous"}
        files.write_text(pointer, json.dumps(record, indent=2) + "\n")
    return {
        "decision": decision,
        "reason": reason,
        "run_id": summary.get("run_id"),
        "val_loss": summary.get("val_loss"),
        "champion_run_id": (champion or {}).get("run_id"),
        "champion_val_loss": (champion or {}).get("val_loss"),
        "champion_uri": pointer,
    }
