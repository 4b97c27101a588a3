"""The `matta` CLI's output policy: quiet by default, one-line errors, exit statuses."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from matta_tf.cli import build_parser, main
from matta_tf.console import is_native_noise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "matta_tf", "configs", "default_ranker.yaml")


def _matta(*argv, env=None):
    """The real console script in a fresh process (TensorFlow's native start-up lines are
    only written once per process, so this is the only honest check of them)."""
    return subprocess.run([sys.executable, "-m", "matta_tf.cli", *argv], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def test_tensorflow_command_prints_no_native_log_lines_by_default_and_does_with_v():
    quiet = _matta("ranker-cost", "--config", CONFIG, "--mixnmatch", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr  # no absl banner, oneDNN or CUDA lines
    assert [line.split('"')[3] for line in quiet.stdout.splitlines()] == ["student", "mix_1", "ta"]
    loud = _matta("-v", "ranker-cost", "--config", CONFIG, "--mixnmatch", "1")
    assert loud.returncode == 0 and "oneDNN" in loud.stderr  # -v brings them back


def test_quiet_prints_nothing_on_stdout():
    result = _matta("-q", "ranker-cost", "--config", CONFIG)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_native_noise_filter_keeps_errors():
    assert is_native_noise(b"I0000 00:00:1795616947.247167   20427 port.cc:153] oneDNN custom operations are on\n")
    assert is_native_noise(b"W1125 14:01:02.123456   17 cuda_executor.cc:1] x\n")
    assert is_native_noise(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    assert not is_native_noise(b"E1125 14:01:02.123456   17 cuda_executor.cc:1] real error\n")
    assert not is_native_noise(b"Traceback (most recent call last):\n")
    assert not is_native_noise(b"matta demo: error: I0000 is not a file\n")


@pytest.mark.parametrize("argv, expected", [
    (["generate-logs", "--rows", "5", "--format", "csv", "--out", "{tmp}/x.parquet"],
     "matta generate-logs: error: --format csv does not match the extension of --out"),
    (["generate-logs", "--rows", "5", "--out", "{tmp}"], "matta generate-logs: error: cannot tell the format"),
    (["generate-logs", "--rows", "5", "--out", "{tmp}/logs"], "matta generate-logs: error: cannot tell the format"),
    (["ranker-cost", "--config", "{tmp}"], "matta ranker-cost: error: --config {tmp} is a directory"),
    (["ranker-cost", "--config", "{tmp}/missing.yaml"], "matta ranker-cost: error:"),
])
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected.format(tmp=tmp_path)), err
    assert "Traceback" not in "".join(err)


def test_scalar_mlp_widths_in_a_ranker_config_is_one_line(tmp_path, capsys):
    import yaml

    with open(CONFIG) as f:
        data = yaml.safe_load(f)
    data["student"]["mlp_widths"] = 128
    config = tmp_path / "ranker.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["ranker-cost", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("matta ranker-cost: error:"), err
    assert "student: mlp_widths must be a list of ints, got 128" in err[0], err


# csv: the criteo preset has no header, so the header line is one more (invalid) row
@pytest.mark.parametrize("fmt, preset, read", [("csv", "synthetic-csv", 31), ("jsonl", "synthetic-jsonl", 30)])
def test_teacher_fit_with_the_wrong_log_schema_says_which_one_reads_the_file(tmp_path, capsys, fmt, preset,
                                                                             read):
    # README step 1 then `teacher fit` with the default --log-schema criteo: every row is
    # invalid; one line says how many were read, the top reason with an example, and the
    # preset that reads the file.
    logs = tmp_path / f"logs.{fmt}"
    assert main(["generate-logs", "--rows", "30", "--out", str(logs), "--teacher-out",
                 str(tmp_path / "teacher.parquet")]) == 0
    capsys.readouterr()
    assert main(["teacher", "fit", "--logs", str(logs), "--export-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"matta teacher fit: error: read {read} rows from 1 file(s) matching {logs} "
                             f"with log-schema 'criteo', none valid: top reason wrong_column_count ({read} rows), "
                             f"e.g. {logs}, line "), err
    assert err[0].endswith(f"; did you mean --log-schema {preset}?"), err
    assert not (tmp_path / "t").exists()


def test_generate_logs_format_follows_the_extension(tmp_path):
    out = tmp_path / "logs.parquet"
    assert main(["generate-logs", "--rows", "20", "--out", str(out), "--num-numeric", "1",
                 "--num-categorical", "1"]) == 0
    assert pq.read_table(out).num_rows == 20  # Parquet, not CSV under a .parquet name


def test_internal_errors_say_so_and_v_shows_the_traceback(monkeypatch, capsys):
    import matta_tf.commands as commands

    def boom(args):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(commands, "_ranker_cost", boom)
    assert main(["ranker-cost", "--config", CONFIG]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["matta ranker-cost: internal error: RuntimeError: first line (...) "
                   "(rerun with -v for the traceback)"]
    assert main(["-v", "ranker-cost", "--config", CONFIG]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "second line" in err


def test_nested_command_names_in_errors(tmp_path, capsys):
    assert main(["ab", "report", "--experiment", str(tmp_path / "none.yaml"), "--events",
                 str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("matta ab report: error:")


def test_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate-logs"]
    text = " ".join(sub.format_help().split())  # argparse wraps lines
    assert "(default: 0)" in text  # --seed
    assert "(default: 0.02)" in text  # --missing-rate
    assert "--teacher-out TEACHER_OUT write teacher logits to this Parquet file instead of a teacher_logit column" in text
    sub = next(a for a in parser._actions if a.dest == "command").choices["ranker-cost"]
    assert "--mixnmatch MIXNMATCH number of intermediate sizes (default: 2)" in " ".join(sub.format_help().split())


def test_demo_runs_again_in_an_existing_root_and_fresh_starts_over(tmp_path, monkeypatch, capsys):
    """`make demo` twice must work. The pipeline itself is covered by test_pipeline.py;
    here run_demo is replaced to check only the CLI's decision about an earlier run."""
    import pipelines.demo

    calls = []
    monkeypatch.setattr(pipelines.demo, "run_demo",
                        lambda root, **kw: calls.append(sorted(os.listdir(root))) or {"arms": ["student"]})
    root = tmp_path / "demo"
    (root / "pipeline").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "pipeline.yaml").write_text("name: x\n")
    assert main(["demo", "--root", str(root)]) == 0
    assert calls[-1] == ["data", "pipeline", "pipeline.yaml"]  # reused, nothing deleted
    assert "holds an earlier run: running again there" in capsys.readouterr().out
    (root / "keep.txt").write_text("user file")
    assert main(["demo", "--root", str(root), "--fresh"]) == 0
    assert calls[-1] == ["keep.txt"]  # only the demo's own outputs are removed


def test_serve_on_a_busy_port_fails_at_once_in_one_line(tmp_path):
    """Before loading any model: the models.config does not even need to exist."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for flag in ("--grpc-port", "--rest-port"):
            other = "--rest-port" if flag == "--grpc-port" else "--grpc-port"
            result = _matta("serve", "--model-config", str(tmp_path / "models.config"), flag, str(port),
                            other, "0")
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [
                f"matta serve: error: {flag} {port}: cannot listen on 127.0.0.1:{port} "
                "(Address already in use); is another server running?"]


def test_handlers_do_not_see_mattas_own_argv(monkeypatch):
    """absl flags and Beam's PipelineOptions() read sys.argv: `matta -v pipeline run` once
    failed with `flag --verbosity=pipeline`. Handlers run with sys.argv[1:] empty."""
    import matta_tf.commands as commands

    seen = []
    monkeypatch.setattr(commands, "_ranker_cost", lambda args: seen.append(list(sys.argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["matta", "-v", "ranker-cost", "--config", CONFIG])
    assert main() == 0
    assert seen == [["matta"]]
