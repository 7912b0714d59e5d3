"""A small client of Airflow's REST API (v2) for the stack's check and its tests: log in, call.

Standard library only. The simple auth manager's token comes from POST /auth/token with the
admin's password; every other call carries it as a Bearer token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


class AirflowApi:
    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.password = password
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            body = {"username": self.user, "password": self.password}
            status, answer = self._request("POST", "/auth/token", body, auth=False)
            if status not in (200, 201):
                raise RuntimeError(f"POST /auth/token answered {status}: {answer}")
            self._token = answer["access_token"]
        return self._token

    def call(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON body); HTTP errors are returned, not raised."""
        return self._request(method, path, payload, auth=True)

    def _request(self, method: str, path: str, payload: Any, auth: bool) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        # A busy machine can stall the API server past a timeout; the calls made here are
        # read-only or idempotent (unpause, one event per check), so a retry changes nothing.
        for attempt in range(1, 4):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, raw = response.status, response.read()
                break
            except urllib.error.HTTPError as exc:
                status, raw = exc.code, exc.read()
                break
            except (TimeoutError, urllib.error.URLError) as exc:
                if attempt == 3:
                    raise RuntimeError(f"{method} {path}: no answer after 3 tries ({exc})") from None
                time.sleep(2 * attempt)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    # --- what the stack's check and tests ask ---------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        status, answer = self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        if status != 200:
            raise RuntimeError(f"unpausing {dag_id} answered {status}: {answer}")

    def asset_id(self, name: str) -> int | None:
        status, answer = self.call("GET", "/api/v2/assets?" + urllib.parse.urlencode({"name_pattern": name}))
        if status != 200:
            return None
        return next((a["id"] for a in answer["assets"] if a["name"] == name), None)

    def post_asset_event(self, asset_id: int, extra: dict[str, Any]) -> dict:
        status, answer = self.call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": extra})
        if status not in (200, 201):
            raise RuntimeError(f"POST /api/v2/assets/events answered {status}: {answer}")
        return answer

    def dag_runs(self, dag_id: str) -> list[dict]:
        status, answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")
        return answer["dag_runs"] if status == 200 else []

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        status, answer = self.call("GET", path)
        return {t["task_id"]: t["state"] for t in answer["task_instances"]} if status == 200 else {}


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 2.0) -> Any:
    """condition()'s first truthy value, polled; TimeoutError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(interval_s)
