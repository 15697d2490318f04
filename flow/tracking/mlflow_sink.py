"""MLflow: one MLflow run per fedgrid run directory, through MlflowClient (never the fluent API's
process-wide active run, which the user's own code may be using)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1,000 metrics) per call
STEP_KEY = "round"  # logged every round: its history tells a resumed run where the tracker is


class MLflowSink:
    name = "mlflow"
    keeps_artifacts = True  # the report's plots and the model, logged at the end

    def __init__(self, spec: Any, job_name: str, run_dir: Path):
        local = run_dir / "mlflow"
        self.uri = spec.uri or f"sqlite:///{local / 'mlflow.db'}"
        self.artifact_root = None if spec.uri else (local / "artifacts").as_uri()
        self.experiment = spec.experiment or job_name
        self.run_dir, self.state = run_dir, run_dir / "tracking.json"
        self.client: Any = None
        self.run_id = ""

    def open(self) -> int:
        import logging

        # MLflow logs its database migrations at INFO on the root handler: not the run's business
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        if self.artifact_root is not None:
            (self.run_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_root)
        self.run_id = self._continued(exp_id) or self.client.create_run(
            exp_id, run_name=self.run_dir.name, tags={"fedgrid.run_dir": str(self.run_dir)}).info.run_id
        self._save(exp_id)
        self.client.update_run(self.run_id, status="RUNNING")
        return max((int(m.step) for m in self.client.get_metric_history(self.run_id, STEP_KEY)), default=0)

    def _continued(self, exp_id: str) -> str | None:
        """This run directory's MLflow run, if tracking.json names one on the same server and
        experiment that still exists."""
        try:
            old = json.loads(self.state.read_text()).get("mlflow") or {}
        except (OSError, ValueError):
            return None
        if old.get("uri") != self.uri or old.get("experiment_id") != exp_id or not old.get("run_id"):
            return None
        try:
            run = self.client.get_run(old["run_id"])
        except Exception:  # noqa: BLE001 - deleted or never there: a new run
            return None
        return run.info.run_id if run.info.lifecycle_stage == "active" else None

    def _save(self, exp_id: str) -> None:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            state = {}
        state["mlflow"] = {"uri": self.uri, "experiment_id": exp_id, "run_id": self.run_id}
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state)

    def params(self, values: dict[str, str]) -> None:
        """The settings not logged yet (an MLflow param cannot change; a resumed run with other
        settings keeps the first ones, and its rounds table has the truth)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in sorted(values.items()) if k not in have]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + BATCH])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, step) for k, v in sorted(values.items())] + [Metric(STEP_KEY, float(step), ts, step)]
        for i in range(0, len(batch), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 10 * BATCH])

    def finish(self, artifacts: list[Path]) -> None:
        for f in artifacts:
            self.client.log_artifact(self.run_id, str(f), artifact_path="model" if f.parent.name == "export" else
                                     "report")
        self.client.update_run(self.run_id, status="FINISHED")
