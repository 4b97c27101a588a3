"""What the pipeline needs to run under TFX's AirflowDagRunner, and `airflow dags test`.

AirflowDagRunner runs every component with TFX's *legacy* launcher (driver
`pre_execution` -> `_prepare_output_artifacts` -> executor), not the IR-based launcher
LocalDagRunner and Kubeflow V2 use. Two things break there, fixed by the drivers below
(`use_legacy_drivers` sets them): TFX's ExampleGen driver prepares only the `examples`
output, so ClickLogExampleGen's `quarantine` would be missing (`KeyError: 'quarantine'`
in the executor); and output artifacts are named `<key>:<run id>`, which MLMD requires
unique per type, so the per-arm Evaluators and Pushers of one run collide.

`dags_test` runs a compiled DAG file once with real Apache Airflow 2 (the overlay venv
`make setup` builds) - `airflow db migrate` into a SQLite metadata DB under
`airflow_home`, then `airflow dags test <dag_id> <date>`, which runs every task in
dependency order in one process - and reads each task instance's state back from
Airflow's own DB.
"""
from __future__ import annotations

import json
import os
import subprocess

from tfx.dsl.components.base import base_driver

from components.example_gen import ClickLogDriver


def _unique_names(result: dict, execution_id: int, pipeline_info, component_info) -> dict:
    """Names every output artifact `<run id>:<component id>:<key>:<execution id>:<index>`.

    MLMD keeps artifact names unique per type, and the legacy driver names outputs
    `<key>:<run id>` only, so the three Evaluators (`evaluation`, `blessing`) and Pushers
    (`pushed_model`) of one run collide (`AlreadyExistsError`), as would a retried task.
    TFX looks legacy outputs up by event path, never by name (metadata.search_artifacts).
    """
    for key, artifacts in result.items():
        for index, artifact in enumerate(artifacts):
            artifact.name = (f"{pipeline_info.run_id}:{component_info.component_id}:{key}:"
                             f"{execution_id}:{index}")
    return result


class UniqueNameDriver(base_driver.BaseDriver):
    """TFX's default driver, with output artifact names unique across components."""

    def _prepare_output_artifacts(self, input_artifacts, output_dict, exec_properties,
                                  execution_id, pipeline_info, component_info):
        result = super()._prepare_output_artifacts(
            input_artifacts, output_dict, exec_properties, execution_id, pipeline_info,
            component_info)
        return _unique_names(result, execution_id, pipeline_info, component_info)


class LegacyClickLogDriver(ClickLogDriver):
    """ClickLogDriver whose legacy (Airflow) path also prepares the non-`examples` outputs."""

    def _prepare_output_artifacts(self, input_artifacts, output_dict, exec_properties,
                                  execution_id, pipeline_info, component_info):
        result = super()._prepare_output_artifacts(
            input_artifacts, output_dict, exec_properties, execution_id, pipeline_info,
            component_info)
        rest = {key: channel for key, channel in output_dict.items() if key not in result}
        result.update(base_driver.BaseDriver._prepare_output_artifacts(
            self, input_artifacts, rest, exec_properties, execution_id, pipeline_info,
            component_info))
        return _unique_names(result, execution_id, pipeline_info, component_info)


def use_legacy_drivers(components: list) -> None:
    """Sets the drivers above on the components of a pipeline run by AirflowDagRunner."""
    from components.example_gen import ClickLogExampleGen

    for component in components:
        if isinstance(component, ClickLogExampleGen):
            component.driver_class = LegacyClickLogDriver
        elif getattr(component, "driver_class", None) is base_driver.BaseDriver:
            component.driver_class = UniqueNameDriver


def airflow_python() -> str | None:
    """The overlay venv's python (bin/matta-env exports it), or None."""
    path = os.environ.get("MATTA_AIRFLOW_PYTHON", "")
    return path if path and os.path.exists(path) else None


def airflow_env(airflow_home: str, dags_folder: str, base: dict | None = None) -> dict:
    """Environment for Airflow CLI processes: their own AIRFLOW_HOME (SQLite DB, logs),
    the DAG folder, no example DAGs, and the SequentialExecutor Airflow defaults to."""
    env = dict(os.environ if base is None else base)
    env.update({
        "AIRFLOW_HOME": airflow_home,
        "AIRFLOW__CORE__DAGS_FOLDER": dags_folder,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{os.path.join(airflow_home, 'airflow.db')}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT": "300",
    })
    return env


def _airflow(python: str, args: list[str], env: dict, log_path: str, timeout: float) -> int:
    """Runs `airflow ARGS` (the overlay's CLI module) with stdout+stderr to `log_path`."""
    with open(log_path, "ab") as log:
        log.write(f"\n$ airflow {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen([python, "-m", "airflow", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:  # timed out (or interrupted): end it and its children
                import signal

                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


_STATES_PROBE = """
import json, sys
from airflow.models import TaskInstance
from airflow.utils.session import create_session
with create_session() as session:
    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == sys.argv[1]).all()
    print(json.dumps([{"run_id": ti.run_id, "task_id": ti.task_id, "state": ti.state,
                       "try_number": ti.try_number} for ti in tis]))
"""


def task_states(python: str, env: dict, dag_id: str) -> dict[str, dict[str, str | None]]:
    """{run_id: {task_id: state}} for `dag_id`, read from Airflow's metadata DB."""
    proc = subprocess.run([python, "-c", _STATES_PROBE, dag_id], env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"reading task states from Airflow's DB failed:\n{proc.stderr[-3000:]}")
    out: dict[str, dict[str, str | None]] = {}
    for row in json.loads(proc.stdout.strip().splitlines()[-1]):
        out.setdefault(row["run_id"], {})[row["task_id"]] = row["state"]
    return out


def dags_test(dag_file: str, dag_id: str, logical_date: str, airflow_home: str,
              python: str | None = None, timeout: float = 1800.0) -> dict:
    """Runs `dag_id` from `dag_file` once with real Airflow (`airflow dags test`).

    `dag_file` must sit in `<airflow_home>/dags` (or any folder: that folder becomes the
    DAG folder). Returns {"returncode", "log" (path), "states": {task_id: state} of this
    run}. The metadata DB is created (`airflow db migrate`) on the first call for a home.
    """
    python = python or airflow_python()
    if not python:
        raise RuntimeError("no Airflow: MATTA_AIRFLOW_PYTHON is unset or missing (run inside "
                           "bin/matta-env after `make setup`)")
    os.makedirs(airflow_home, exist_ok=True)
    env = airflow_env(airflow_home, os.path.dirname(os.path.abspath(dag_file)))
    log_path = os.path.join(airflow_home, f"dags-test-{dag_id}-{logical_date}.log")
    if not os.path.exists(os.path.join(airflow_home, "airflow.db")):
        rc = _airflow(python, ["db", "migrate"], env, log_path, timeout=600)
        if rc != 0:
            raise RuntimeError(f"`airflow db migrate` failed (exit {rc}); log: {log_path}")
    rc = _airflow(python, ["dags", "test", dag_id, logical_date], env, log_path, timeout)
    runs = {run: s for run, s in task_states(python, env, dag_id).items() if logical_date in run}
    run_id = max(runs) if runs else None
    return {"returncode": rc, "log": log_path, "run_id": run_id,
            "states": runs.get(run_id, {})}


def write_pushed_models_config(config, path: str) -> dict[str, str]:
    """A `models.config` serving each arm's Pusher directory (`<serving_dir>/<model>_<arm>`)
    with TF Serving's default version policy (latest 1), so a running `matta serve` (or
    `tensorflow_model_server`) started on it loads each newly pushed version by polling.
    Returns arm -> model name."""
    names = {arm: f"{config.model_name}_{arm}" for arm in config.arms}
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: '
        f'"{os.path.abspath(os.path.join(config.serving_dir, name))}"\n'
        '    model_platform: "tensorflow"\n  }\n' for name in names.values())
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("model_config_list {\n" + entries + "}\n")
    return names


def main(argv=None) -> int:
    """`python -m pipelines.airflow_support DAG_FILE DAG_ID DATE --airflow-home DIR`: one
    run of a compiled DAG by real Airflow (inside bin/matta-env), one line per task."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipelines.airflow_support",
                                     description=main.__doc__)
    parser.add_argument("dag_file")
    parser.add_argument("dag_id", help="the pipeline config's `name`")
    parser.add_argument("date", help="logical date, e.g. 2025-01-01")
    parser.add_argument("--airflow-home", required=True,
                        help="AIRFLOW_HOME: SQLite metadata DB and logs (created if missing)")
    args = parser.parse_args(argv)
    run = dags_test(args.dag_file, args.dag_id, args.date, os.path.abspath(args.airflow_home))
    for task, state in sorted(run["states"].items()):
        print(f"{task:24s} {state}")
    print(f"run {run['run_id']}: airflow exit {run['returncode']}; log {run['log']}")
    ok = run["returncode"] == 0 and run["states"] and all(
        s == "success" for s in run["states"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
