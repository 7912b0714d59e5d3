"""Promotion: `<root>/models/champion.json` points at the best run so far, compared like with like.

Every run's summary carries an evaluation fingerprint (`evaluation`: the corpus content hash,
the split rule and validation share, the characters the validation figures were scored on,
the loss, and for the mlp its embedding table's hash). A run replaces the champion only when
the fingerprints match and it is better on the same scale:

    gpt   full-split bits per character (lower wins): comparable across vocabularies
    mlp   full-split val_loss (MSE or cosine to the same frozen embedding table)

Anything else is "not comparable": the reason is logged and the champion kept (except a champion
promoted before fingerprints existed, or evaluated by an older version of the figures
(`evaluation.version`), which nothing could ever beat: the next run replaces it, saying so). The first run
with a finite loss becomes champion; promoting the same run twice changes nothing (a retried
task is harmless). The pointer is replaced with a conditional write, so two runs finishing at
once cannot overwrite each other's decision: the loser reads the new champion and decides again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llm_decoder_airflow.files import FileStore, join
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

# What must be equal for two runs' validation figures to be comparable.
FINGERPRINT_KEYS = (
    "version",
    "corpus_sha256",
    "split_by",
    "valid_split",
    "val_chars_scored",
    "loss",
    "embeddings_sha256",
)
ATTEMPTS = 5


def champion_uri(root: str) -> str:
    return join(root, "models", "champion.json")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metric(summary: Mapping[str, Any]) -> str:
    return "val_bits_per_char" if summary.get("model_kind") == "gpt" else "val_loss"


def not_comparable(new: Mapping[str, Any], champion: Mapping[str, Any]) -> str | None:
    """Why the two runs' figures cannot be compared, or None when they can."""
    if new.get("model_kind") != champion.get("model_kind"):
        return f"model kinds differ ({new.get('model_kind')} vs the champion's {champion.get('model_kind')})"
    new_fp, old_fp = new.get("evaluation"), champion.get("evaluation")
    if not isinstance(new_fp, Mapping) or not isinstance(old_fp, Mapping):
        which = "the new run" if not isinstance(new_fp, Mapping) else "the champion"
        return f"{which} has no evaluation fingerprint"
    differing = [key for key in FINGERPRINT_KEYS if new_fp.get(key) != old_fp.get(key)]
    if differing:
        return "evaluated differently: " + ", ".join(
            f"{key} {new_fp.get(key)!r} vs {old_fp.get(key)!r}" for key in differing
        )
    return None


def _older_evaluation(new: Mapping[str, Any], champion: Mapping[str, Any]) -> str | None:
    """Why the champion's figures were measured by an older evaluation than the new run's, or None."""
    new_fp, old_fp = new.get("evaluation"), champion.get("evaluation")
    if not isinstance(new_fp, Mapping) or not isinstance(old_fp, Mapping):
        return None
    new_version, old_version = new_fp.get("version", 1), old_fp.get("version", 1)
    if not (isinstance(new_version, int) and isinstance(old_version, int)) or old_version >= new_version:
        return None
    return (
        f"the champion {champion.get('run_id')} was evaluated by an older version (evaluation "
        f"version {old_version}, now {new_version}) and can never be compared: this run replaces it"
    )


def decide(new: Mapping[str, Any], champion: Mapping[str, Any] | None) -> tuple[str, str]:
    """(decision, reason): decision is promoted, kept, not comparable, unchanged or skipped."""
    metric = _metric(new)
    if not _finite(new.get(metric)):
        return "skipped", f"the new run has no finite {metric} ({new.get(metric)!r})"
    if champion is None:
        return "promoted", "first run: no champion yet"
    if champion.get("run_id") == new.get("run_id"):
        return "unchanged", "this run is already the champion"
    if isinstance(new.get("evaluation"), Mapping) and not isinstance(champion.get("evaluation"), Mapping):
        # A champion from before runs carried a fingerprint can never be compared again: kept,
        # it would block every later promotion. The record keeps it as `previous`.
        return "promoted", (
            f"the champion {champion.get('run_id')} has no evaluation fingerprint (promoted by an "
            "older version) and can never be compared: a fingerprinted run replaces it"
        )
    older = _older_evaluation(new, champion)
    if older:
        # Figures from an older evaluation can never be compared again: kept, such a champion
        # would block every later promotion (scheduled retraining would stall for good).
        return "promoted", older
    why = not_comparable(new, champion)
    if why:
        return "not comparable", f"{why}; the champion stays"
    new_value, old_value = new[metric], champion.get(metric)
    if not _finite(old_value) or new_value < old_value:
        return "promoted", f"{metric} {new_value:.4f} beats the champion's {old_value}"
    return "kept", f"{metric} {new_value:.4f} does not beat the champion's {old_value:.4f}"


def read_champion(text: str | None, pointer: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        champion = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{pointer}: not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it"
        ) from None
    if not isinstance(champion, dict) or "run_id" not in champion:
        raise InputError(f"{pointer}: not a champion record (no run_id); fix or delete it")
    return champion


def champion_record(summary: Mapping[str, Any], champion: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "run_id": summary["run_id"],
        "model_kind": summary.get("model_kind"),
        "val_loss": summary["val_loss"],
        "val_bits_per_char": summary.get("val_bits_per_char"),
        "evaluation": summary.get("evaluation"),
        "model_uri": summary.get("model_uri"),
        "summary_uri": summary.get("summary_uri"),
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous": {k: v for k, v in champion.items() if k != "previous"} if champion else None,
    }


def promote(files: FileStore, root: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Update the champion pointer if this run is better; return the decision for XCom."""
    pointer = champion_uri(root)
    for _ in range(ATTEMPTS):
        text, version = files.read_versioned(pointer)
        champion = read_champion(text, pointer)
        decision, reason = decide(summary, champion)
        if decision != "promoted":
            break
        record = json.dumps(champion_record(summary, champion), indent=2) + "\n"
        if files.write_if_version(pointer, record, version):
            break
        log.warning("%s changed while this run was being judged: deciding again", pointer)
    else:
        raise RuntimeError(
            f"{pointer} kept changing during {ATTEMPTS} attempts to promote {summary.get('run_id')}"
        )
    log.info(
        "promotion %s: %s (new run %s %s=%s; champion %s)",
        *(decision, reason, summary.get("run_id"), _metric(summary), summary.get(_metric(summary))),
        champion.get("run_id") if champion else None,
    )
    return {
        "decision": decision,
        "reason": reason,
        "run_id": summary.get("run_id"),
        "val_loss": summary.get("val_loss"),
        "val_bits_per_char": summary.get("val_bits_per_char"),
        "champion_run_id": (champion or {}).get("run_id"),
        "champion_val_loss": (champion or {}).get("val_loss"),
        "champion_uri": pointer,
    }
