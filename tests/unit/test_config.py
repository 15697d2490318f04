"""Job file validation (fedgrid.flow.config) and the CLI's one-line error handling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedgrid.flow.config import ConfigError, Job, load_job, parse_job

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart.yaml"

# A small valid job; the error cases below change one thing in it.
BASE = """\
name: t
rounds: 3
model: logreg
data: {dataset: digits, clients: 4, partition: {kind: iid}}
round: {min_clients: 2}
sites:
  - {name: a, executor: {kind: local}, clients: 2}
  - {name: b, executor: {kind: local}, clients: 2}
"""


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).replace("@TMP@", str(tmp_path)))
    return p


def _error(path: Path, overrides: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_job(path, overrides)
    return ei.value


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgrid.flow.commands.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


# -- valid jobs ---------------------------------------------------------------------------------


def test_quickstart_loads():
    job = load_job(QUICKSTART)
    assert isinstance(job, Job)
    assert job.name == "quickstart"
    assert job.rounds == 20
    assert job.model.name == "cnn"  # string shorthand
    assert job.data.dataset == "digits"
    assert job.data.partition.kind == "dirichlet"
    assert job.data.partition.alpha == 0.5
    assert [s.name for s in job.sites] == ["hpc-a", "cloud-b"]
    assert job.client_sites() == ["hpc-a"] * 5 + ["cloud-b"] * 5
    assert job.round.min_clients == 8
    assert job.clients_per_round() == 10


def test_base_job_is_valid(tmp_path):
    job = load_job(_write(tmp_path, BASE))
    assert job.client_sites() == ["a", "a", "b", "b"]


def test_sites_without_counts_share_clients(tmp_path):
    job = load_job(_write(tmp_path, """\
        data: {clients: 7}
        model: logreg
        sites: [{name: a}, {name: b, clients: 2}, {name: c}]
    """))
    assert [s.clients for s in job.sites] == [3, 2, 2]


def test_empty_file_gives_defaults(tmp_path):
    job = load_job(_write(tmp_path, ""))
    assert job.name == "job" and job.data.clients == 10 and job.client_sites() == ["here"] * 10


# -- --set overrides ----------------------------------------------------------------------------


def test_override_nested_key():
    job = load_job(QUICKSTART, ["round.min_clients=4"])
    assert job.round.min_clients == 4


def test_override_list_index():
    job = load_job(QUICKSTART, ["sites.0.executor.workers=2"])
    assert job.sites[0].executor.workers == 2
    assert job.sites[1].executor.workers == 1


def test_override_values_parsed_as_yaml():
    job = load_job(QUICKSTART, ["rounds=3", "train.momentum=0.5", "data.partition={kind: iid}"])
    assert job.rounds == 3 and job.train.momentum == 0.5 and job.data.partition.kind == "iid"


def test_override_list_index_out_of_range():
    e = _error(QUICKSTART, ["sites.5.executor.workers=2"])
    assert e.key == "sites.5.executor.workers"
    assert str(QUICKSTART) in str(e)
    assert "sites.5.executor.workers" in str(e)
    assert "index" in str(e) and "0..1" in str(e)


def test_override_non_numeric_index():
    e = _error(QUICKSTART, ["sites.x.clients=2"])
    assert e.key == "sites.x.clients"


def test_override_without_equals():
    e = _error(QUICKSTART, ["rounds"])
    assert "key=value" in str(e)


def test_override_is_validated():
    e = _error(QUICKSTART, ["round.min_clients=11"])
    assert e.key == "round.min_clients"
    assert "<= data.clients (10)" in str(e)


# -- every error names file, key and expectation ------------------------------------------------

CASES = {
    "unknown_top_level_key": (
        BASE + "epochz: 3\n", "epochz",
        ["unknown key", "valid keys", "checkpoint", "data", "model", "round", "rounds", "sites", "train"]),
    "unknown_nested_key": (
        BASE + "train: {lrr: 0.1}\n", "train.lrr",
        ["unknown key", "valid keys", "batch_size", "epochs", "lr", "momentum"]),
    "wrong_type": (
        BASE.replace("rounds: 3", 'rounds: "ten"'), "rounds", ["integer", "'ten'"]),
    "min_clients_above_clients": (
        BASE.replace("min_clients: 2", "min_clients: 5"), "round.min_clients",
        ["<= data.clients (4)", "got 5"]),
    "alpha_zero": (
        BASE.replace("{kind: iid}", "{kind: dirichlet, alpha: 0}"), "data.partition.alpha",
        ["greater than 0", "got 0"]),
    "alpha_negative": (
        BASE.replace("{kind: iid}", "{kind: dirichlet, alpha: -0.5}"), "data.partition.alpha",
        ["greater than 0", "-0.5"]),
    "site_clients_do_not_add_up": (
        BASE.replace("clients: 4", "clients: 6"), "sites", ["add up to 4", "data.clients (6)"]),
    "duplicate_site_names": (
        BASE.replace("{name: b,", "{name: a,"), "sites", ["unique", "'a'"]),
    "unknown_executor_kind": (
        BASE.replace("{name: b, executor: {kind: local}", "{name: b, executor: {kind: slurmm}"),
        "sites.1.executor", ["unknown executor kind 'slurmm'", "htex", "slurm", "globus_compute"]),
    "misspelled_required_option": (  # reported as the typo, not as the required `image` missing
        BASE.replace("{name: b, executor: {kind: local}", "{name: b, executor: {kind: kubernetes, imgae: x}"),
        "sites.1.executor.imgae", ["unknown key", "image", "namespace"]),
    "misspelled_slurm_option": (
        BASE.replace("{name: b, executor: {kind: local}", "{name: b, executor: {kind: slurm, partitoin: x}"),
        "sites.1.executor.partitoin", ["unknown key", "partition", "account", "walltime"]),
    "parquet_without_path": (
        BASE.replace("dataset: digits", "dataset: parquet"), "data.path", ["parquet", "needs a path"]),
    "parquet_path_not_found": (
        BASE.replace("dataset: digits", "dataset: parquet, path: @TMP@/nope.parquet"), "data.path",
        ["parquet file not found", "nope.parquet"]),
    "fashion_mnist_missing_files": (
        BASE.replace("dataset: digits", "dataset: fashion_mnist, root: @TMP@"), "data.root",
        ["Fashion-MNIST files not found", "train-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist"]),
    "model_unknown_name": (
        BASE.replace("model: logreg", "model: nosuch"), "model", ["'cnn'", "'logreg'", "'mlp'", "'nosuch'"]),
    "model_unimportable_module": (
        BASE.replace("model: logreg", "model: 'nosuchpkg.mod:f'"), "model", ["cannot import", "nosuchpkg.mod"]),
    "model_missing_factory": (
        BASE.replace("model: logreg", "model: 'json:nosuchfactory'"), "model", ["no callable", "nosuchfactory"]),
    "natural_without_column": (
        BASE.replace("{kind: iid}", "{kind: natural}"), "data.partition.column", ["natural", "column"]),
    "bad_site_name": (
        BASE.replace("{name: b,", "{name: 'b c',"), "sites.1.name", ["pattern"]),
    "unknown_site_data_key": (
        BASE.replace("{name: a, executor: {kind: local}, clients: 2}",
                     "{name: a, executor: {kind: local}, clients: 2, data: {bogus: 1}}"), "sites.0.data",
        ["bogus", "valid"]),
    "top_level_not_a_mapping": ("- 1\n- 2\n", "", ["mapping", "list"]),
}


@pytest.mark.parametrize("text,key,expected", list(CASES.values()), ids=list(CASES))
def test_error_names_file_key_and_expectation(tmp_path, text, key, expected):
    path = _write(tmp_path, text)
    e = _error(path)
    msg = str(e)
    assert e.file == str(path)
    assert e.key == key
    assert msg.startswith(str(path) + ": ")
    if key:
        assert f": {key}: " in msg
    for frag in expected:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert "\n" not in msg


def test_missing_job_file(tmp_path):
    path = tmp_path / "absent.yaml"
    e = _error(path)
    assert str(path) in str(e)
    assert "not found" in str(e)


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "name: t\nrounds: [1, 2\ndata: {clients: 3}\n")
    e = _error(path)
    assert str(path) in str(e)
    assert "not valid YAML" in str(e)
    assert "line" in str(e)


def test_parse_job_default_file_label():
    with pytest.raises(ConfigError, match=r"^<job>: rounds: "):
        parse_job({"rounds": 0})


def test_fashion_mnist_site_override(tmp_path):
    """A site that overrides the dataset is checked with the site's data, and named in the key."""
    text = BASE.replace("{name: b, executor: {kind: local}, clients: 2}",
                        "{name: b, executor: {kind: local}, clients: 2, "
                        "data: {dataset: fashion_mnist, root: @TMP@}}")
    e = _error(_write(tmp_path, text))
    assert e.key.startswith("sites.") and e.key.endswith(".data.root")
    assert "apt-get install dataset-fashion-mnist" in str(e)


# -- through the real CLI -----------------------------------------------------------------------


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"


def test_cli_check_bad_job_exits_2(tmp_path):
    path = _write(tmp_path, BASE + "train: {lrr: 0.1}\n")
    proc = _cli("check", str(path), cwd=tmp_path)
    _assert_one_line_error(proc, str(path), "train.lrr", "unknown key")


def test_cli_check_bad_override_exits_2(tmp_path):
    proc = _cli("check", str(QUICKSTART), "--set", "sites.9.executor.workers=2", cwd=tmp_path)
    _assert_one_line_error(proc, str(QUICKSTART), "sites.9.executor.workers")


def test_cli_check_missing_file_exits_2(tmp_path):
    path = tmp_path / "absent.yaml"
    proc = _cli("check", str(path), cwd=tmp_path)
    _assert_one_line_error(proc, str(path), "not found")


def test_cli_check_quickstart(tmp_path, monkeypatch, cli):
    # (in this process: the model is built to count its parameters, and a second interpreter would
    # import torch again; the one-line errors above are a process's own stderr and exit code)
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli("check", QUICKSTART)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "job quickstart" in out
    assert "sites:" in out
    assert "hpc-a" in out and "cloud-b" in out
    assert "clients 0..4 (5)" in out and "clients 5..9 (5)" in out
    assert not (tmp_path / "runs").exists()  # check starts nothing and writes nothing
