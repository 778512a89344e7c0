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
