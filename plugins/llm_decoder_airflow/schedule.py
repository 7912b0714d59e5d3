"""When a DAG starts a run by itself: a cron schedule, an update of the corpus Asset, or both.

Both DAGs take `airflow.schedule` (cron or preset) and `airflow.trigger_on_corpus_update` from
their config; an Asset event (posted by a producer DAG or through the REST API) for the corpus
starts a retraining. With max_active_runs=1, a run started while another is active waits.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

from llm_decoder_airflow.settings import PROJECT_ROOT, AirflowSettings


def corpus_asset(name: str, corpus_path: str) -> Asset:
    """The corpus as an Asset: its s3:// URI, or a local path as a file:// URI (relative paths
    are the project's, as the local steps resolve them)."""
    if "://" in corpus_path:
        return Asset(name=name, uri=corpus_path)
    path = Path(corpus_path)
    return Asset(name=name, uri=(path if path.is_absolute() else PROJECT_ROOT / path).resolve().as_uri())


def run_schedule(settings: AirflowSettings, corpus: Asset):
    """The DAG's `schedule`: the cron, the corpus Asset, either of them, or None (manual only)."""
    if settings.schedule and settings.trigger_on_corpus_update:
        cron = CronTriggerTimetable(settings.schedule, timezone="UTC")
        return AssetOrTimeSchedule(timetable=cron, assets=[corpus])
    if settings.schedule:
        return settings.schedule
    return [corpus] if settings.trigger_on_corpus_update else None
