"""profile helpers: the manifest's commit stamp."""


def test_git_commit_is_dirty_for_code_changes_but_not_for_rewritten_outputs(tmp_path):
    import subprocess

    from p2bot_utils.profile import git_commit

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    for rel in ("code.py", "results/demo/t.md", "figures/demo/f.pdf"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    (tmp_path / "results/demo/t.md").write_text("b\n")  # a run rewrites committed outputs
    (tmp_path / "figures/demo/f.pdf").write_text("b\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("b\n")
    assert git_commit(tmp_path) == head + "+dirty"


def test_tables_written_for_the_shipped_sample_say_so_and_real_ones_are_unchanged(tmp_path):
    import pandas as pd

    from p2bot_utils.profile import SAMPLE_WARNING, write_table

    df = pd.DataFrame({"system": ["a"], "hits": [1.0]})
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-sample").mkdir()
    real_csv, real_md = write_table(df, tmp_path / "demo" / "t")
    assert pd.read_csv(real_csv).columns.tolist() == ["system", "hits"]
    assert real_md.read_text() == df.to_markdown(index=False, floatfmt=".2f") + "\n"
    csv, md = write_table(df, tmp_path / "demo-sample" / "t")
    assert pd.read_csv(csv)["data_warning"].tolist() == [SAMPLE_WARNING]
    assert md.read_text().startswith(f"**{SAMPLE_WARNING}.**\n\n|")


def test_phase_clock_counts_each_second_once_and_reaches_the_manifest(tmp_path, monkeypatch):
    """Seconds per phase are exclusive (time in a nested phase counts for the inner one only), add up
    across calls, work as a decorator, restart at notebook_params, and update_manifest writes them with the
    rest of the wall time as "other"."""
    import json

    from p2bot_utils import profile

    now = [0.0]
    monkeypatch.setattr(profile.time, "perf_counter", lambda: now[0])

    @profile.timed_phase("generation")
    def generate(seconds):
        now[0] += seconds

    profile.notebook_params({"seed": 0}, "x_")  # resets the clock
    with profile.timed_phase("self-play rollouts"):
        now[0] += 2.0
        generate(3.0)       # nested: 3 s of generation, not of rollouts
        now[0] += 1.0
    generate(0.5)
    assert profile.phase_seconds() == {"generation": 3.5, "self-play rollouts": 3.0}
    profile.update_manifest(tmp_path, "03_selfplay_rl", {"profile": "smoke"}, 10.0)
    entry = json.loads((tmp_path / "manifest.json").read_text())["notebooks"]["03_selfplay_rl"]
    assert entry["phase_seconds"] == {"generation": 3.5, "self-play rollouts": 3.0, "other": 3.5}
    # the machine names its CPU model and the instruction set torch dispatches to: the same core count on
    # another CPU model is another machine, and the manifest's times are only comparable on the same one
    import torch

    assert isinstance(entry["machine"]["cpu"], str) and entry["machine"]["cpu"]
    assert entry["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert profile.cpu_model() == entry["machine"]["cpu"]
    assert profile.phase_seconds(reset=True) and profile.phase_seconds() == {}
