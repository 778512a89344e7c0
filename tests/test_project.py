"""The house rules as tests: environment files agree, notebooks are committed clean, profiles are complete."""
from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from p2bot_utils import cli, profile

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_parses_and_lists_the_same_dependencies_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    conda_reqs = {r for r in pip_section if not r.startswith("-e")}
    assert conda_reqs == set(pyproject["project"]["dependencies"])


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{nb.name}: cells {dirty} have outputs; strip them (executed copies belong in build/)"


def test_every_notebook_has_one_parameters_cell():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb.name}: {len(tagged)} cells tagged 'parameters', want exactly 1"


def test_profiles_define_the_same_keys():
    keys = {p: set(profile.load_params(p)) for p in profile.PROFILES}
    assert keys["smoke"] == keys["demo"] == keys["paper"], {p: keys["smoke"] ^ k for p, k in keys.items()}
    for p in profile.PROFILES:
        assert profile.load_params(p)["profile"] == p


def test_notebook_parameters_exist_in_every_profile():
    """A key a notebook's parameters cell declares must be set by every profile (no silent smoke default)."""
    smoke = set(profile.load_params("smoke"))
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        declared = set(profile.notebook_parameters(nb))
        assert declared <= smoke, f"{nb.name}: parameters missing from configs/*.yaml: {sorted(declared - smoke)}"


def test_every_profile_key_is_declared_by_some_notebook():
    """run_all.sh hands each notebook only what it declares: a key no notebook declares would be lost."""
    declared = {k for nb in (ROOT / "notebooks").glob("*.ipynb") for k in profile.notebook_parameters(nb)}
    assert set(profile.load_params("smoke")) <= declared, sorted(set(profile.load_params("smoke")) - declared)


def test_papermill_parses_every_declared_parameter():
    """papermill's own parser (``papermill --help-notebook``) must see them all: it skips a line whose comment
    holds an '=', and then warns "unknown parameter" on every run."""
    import papermill

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert list(papermill.inspect_notebook(str(nb))) == profile.notebook_parameters(nb), nb.name


def _notebook(path: Path, source: str, tags=("parameters",)) -> Path:
    cell = {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": source, "outputs": [],
            "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_notebook_parameters_reads_plain_and_annotated_assignments(tmp_path):
    nb = _notebook(tmp_path / "a.ipynb", 'x = 1  # a comment (with | odd [chars])\ny: int = 2\nprint(x)\nz = [\n 1]\n')
    assert profile.notebook_parameters(nb) == ["x", "y", "z"]
    with pytest.raises(ValueError, match="b.ipynb: 0 cells tagged 'parameters'"):
        profile.notebook_parameters(_notebook(tmp_path / "b.ipynb", "x = 1", tags=()))
    (tmp_path / "c.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="c.ipynb: not a readable notebook"):
        profile.notebook_parameters(tmp_path / "c.ipynb")


def test_notebook_params_command_keeps_the_notebooks_keys_and_refuses_unknown_ones(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    a = _notebook(nbs / "00_a.ipynb", "seed = 0\nlr = 0.1\n")
    _notebook(nbs / "01_b.ipynb", "steps = 3\n")
    prof = tmp_path / "p.yaml"
    prof.write_text("seed: 7\nlr: 0.5\nsteps: 9\n")
    assert cli.notebook_params([str(prof), str(a), str(tmp_path / "out.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == {"seed": 7, "lr": 0.5}
    prof.write_text("seed: 7\nlr: 0.5\nsteps: 9\nstpes: 1\n")
    assert cli.main(["notebook-params", str(prof), str(a), str(tmp_path / "out2.yaml")]) == 2
    assert "stpes set by the profile but declared by no notebook" in capsys.readouterr().err
    assert not (tmp_path / "out2.yaml").exists()


def test_unknown_profile_is_a_clear_error():
    from p2bot_utils.errors import ConfigError

    with pytest.raises(ConfigError, match="no such profile"):
        profile.load_params("nonexistent")


def test_output_dirs_keep_sample_runs_apart(tmp_path):
    res, fig = profile.output_dirs("demo", "real", root=tmp_path)
    assert res == tmp_path / "results" / "demo" and fig == tmp_path / "figures" / "demo"
    res, fig = profile.output_dirs("demo", "sample", root=tmp_path)
    assert res.name == "demo-sample" and fig.name == "demo-sample" and res.is_dir()


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "a" / "x.json"
    profile.atomic_write_json(target, {"b": 1})
    assert json.loads(target.read_text()) == {"b": 1}

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        profile.atomic_write_json(target, {"b": Boom()})
    assert json.loads(target.read_text()) == {"b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_manifest_records_commit_params_and_wall_time(tmp_path):
    profile.update_manifest(tmp_path, "00_data", {"profile": "smoke"}, 1.234, data_source="sample")
    profile.update_manifest(tmp_path, "01_transmitter_mle", {"profile": "smoke"}, 2.0)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert set(m["notebooks"]) == {"00_data", "01_transmitter_mle"}
    entry = m["notebooks"]["00_data"]
    assert entry["wall_time_s"] == 1.2 and entry["data_source"] == "sample"
    assert entry["params"] == {"profile": "smoke"} and entry["commit"] and "torch" in entry["machine"]


def test_manifest_paths_are_relative_to_the_repository(tmp_path):
    root = profile.repo_root()
    runs = root / "runs"
    profile.update_manifest(tmp_path, "02_receiver", {"profile": "smoke", "data_dir": str(tmp_path)}, 1.0,
                            receiver_dir=str(root / "configs"), models=[str(root / "notebooks")],
                            note="/not/a/path on this machine", missing=str(runs / "never-made-xyz"))
    entry = json.loads((tmp_path / "manifest.json").read_text())["notebooks"]["02_receiver"]
    assert entry["receiver_dir"] == "configs" and entry["models"] == ["notebooks"]
    assert entry["params"]["data_dir"] == os.path.relpath(tmp_path, root)  # outside: ../.. as needed
    assert entry["note"] == "/not/a/path on this machine"  # a text, not a path here: untouched
    assert entry["missing"] == "runs/never-made-xyz"  # not made yet, but inside the repository


def test_write_table_writes_csv_and_markdown(tmp_path):
    pd = pytest.importorskip("pandas")
    csv, md = profile.write_table(pd.DataFrame({"system": ["a"], "hits@1": [12.345]}), tmp_path / "t")
    assert csv.read_text().splitlines() == ["system,hits@1", "a,12.345"]
    assert "12.35" in md.read_text()


def test_every_notebook_names_its_outputs_as_parameters_and_reads_no_other_manifest():
    """Every path a notebook reads or writes is one of its parameters (results_dir / figures_dir default to
    results/<profile>/ ...), and no notebook learns a setting from another notebook's manifest."""
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert {"results_dir", "figures_dir"} <= set(profile.notebook_parameters(nb)), nb.name
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert not re.search(r"manifest[^\n]*(read_text|\.open\(|json\.load)|json\.loads?\([^\n]*manifest", code), nb.name


def test_notebook_cells_have_stable_unique_ids_and_no_generator_scripts_remain():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        ids = [c.get("id") for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), f"{nb.name}: missing or repeated cell ids"
    assert not list((ROOT / "scripts").glob("make_*notebook*.py")), "notebooks are their own source: edit them"


def test_bench_transmitter_reports_every_ratio_with_its_flops():
    """The benchmark runs end to end on a tiny model and the shipped sample, and reports each ratio the
    speed goals name together with the FLOPs behind it (numbers depend on the machine: no goal asserted)."""
    from p2bot_utils import bench
    from p2bot_utils.data import sample_data_dir

    res = bench.transmitter(backbone="tiny-gpt2", data_dir=str(sample_data_dir()), max_len=128, steps=1, turns=2,
                            max_new_tokens=4, rank_batch_size=2)
    assert res["data_source"] == "sample"
    for key in ("train_mfu", "train_shared_mfu", "rank_speedup", "rank_fraction_of_peak", "gen_speedup", "gen_fraction_of_peak_batched",
                "gen_gflop_per_reply", "rank_gflop_per_turn"):
        assert res[key] > 0, key
    assert res["matmul_peak_tflops"] >= res["matmul_peak_tflops_first"] > 0  # the higher of before and after
    assert res["train_mfu"] == pytest.approx(res["train_model_flops_per_s"] / (res["matmul_peak_tflops"] * 1e12))


@pytest.mark.parametrize("script", ["run_all.sh", "lab.sh"])
def test_a_relative_data_dir_is_taken_from_where_the_command_was_typed(tmp_path, script):
    """The notebooks run in notebooks/, so the scripts make P2BOT_DATA_DIR absolute before they cd anywhere."""
    import subprocess

    text = (ROOT / script).read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.startswith('if [ -n "${P2BOT_DATA_DIR:-}" ]'))
    assert text.index(line) < text.index('cd "$(dirname "$0")"')
    out = subprocess.run(["bash", "-c", f'{line}\necho "$P2BOT_DATA_DIR"'], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "P2BOT_DATA_DIR": "../data/convai2"}, check=True).stdout
    assert out.strip() == str((tmp_path / "../data/convai2").resolve())
    unset = {k: v for k, v in os.environ.items() if k != "P2BOT_DATA_DIR"}
    assert subprocess.run(["bash", "-c", f'set -u\n{line}\necho "${{P2BOT_DATA_DIR:-unset}}"'], cwd=tmp_path,
                          capture_output=True, text=True, env=unset, check=True).stdout.strip() == "unset"
