"""Which output each step was made from, so nothing stale is ever used.

Every committed step output's `_SUCCESS` names the output (a new id per commit) and the ids of
the outputs it was made from (`storage.step_output(made_from=...)`):

    window/_SUCCESS    {"output": "9f2c01ab", "made_from": {"preprocess": "41d07e3c"}}

So when preprocess runs again under the same run id (a new corpus, say), the window output
made from the old one is refused by train with one line, and a checkpoint trained on old data
is never resumed (its state records `made_from` too). Re-running preprocess or window also
removes the run's checkpoints: what they were trained on is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)


def current_outputs(root: str, run_id: str, steps: tuple[str, ...]) -> dict[str, str | None]:
    """The output id of each step's committed output (None: written before ids existed)."""
    return {step: storage.output_record(storage.step_dir(root, run_id, step)).get("output") for step in steps}


def changed_inputs(recorded: Mapping[str, str | None], current: Mapping[str, str | None]) -> list[str]:
    """Lines saying which inputs differ from what an output or checkpoint was made from."""
    return [
        f"{step} output {recorded[step]} is now {output}"
        for step, output in current.items()
        if recorded.get(step) is not None and output is not None and recorded[step] != output
    ]


def require_made_from_current(step_uri: str, step: str, current: Mapping[str, str | None]) -> None:
    """Refuse `step`'s output when an input it was made from has been re-run since."""
    recorded = storage.output_record(step_uri).get("made_from") or {}
    changed = changed_inputs(recorded, current)
    if changed:
        inputs = ", ".join(s for s in current if recorded.get(s) not in (None, current[s]))
        raise InputError(
            f"{step_uri} is stale: it was made before {inputs} ran again ({'; '.join(changed)}); re-run {step}"
        )


def drop_checkpoints(root: str, run_id: str, because: str) -> None:
    """Remove the run's checkpoints: they were trained on data that `because` replaced."""
    checkpoints = storage.join(storage.run_dir(root, run_id), "checkpoints")
    if storage.list_dir(checkpoints):
        log.warning("removing %s: %s replaced the data they were trained on", checkpoints, because)
        storage.delete(checkpoints)
