"""The human-evaluation kit: blind export, import of a synthetic filled sheet (round trip), Table 2, Wilcoxon."""
from __future__ import annotations

import csv

import pandas as pd
import pytest

from p2bot_utils import human_eval as he
from p2bot_utils import cli
from p2bot_utils.cli import human_eval as human_eval_cli

SYSTEMS = ("Alphabot", "Betabot")


def samples(n=6):
    return [{"example": f"ep{i}:t{i % 3}", "persona": [f"i own {i} cats.", "i am a nurse."],
             "context": ["hi !", "hello , how are you ?", f"question {i} ?"], "human": f"human reply {i}",
             "replies": {"Alphabot": f"alpha reply {i}", "Betabot": f"beta reply {i}"}} for i in range(n)]


def fill(sheet, key, out, rule):
    """Write a filled copy of ``sheet``: rating = rule(system, example) looked up through the key."""
    k = pd.read_csv(key, dtype=str).set_index("row_id")
    with open(sheet, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["rating"] = str(rule(k.loc[r["row_id"], "system"], k.loc[r["row_id"], "example"]))
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def rule(system, example):
    # Alphabot always 4; Betabot 2, except 3 on ep0; human always 3
    return {"Alphabot": 4, "human": 3}.get(system, 3 if example.startswith("ep0:") else 2)


@pytest.fixture
def exported(tmp_path):
    return he.export_rating_sheet(samples(), tmp_path / "sheet" / "rating_sheet.csv",
                                  tmp_path / "key" / "rating_key.csv", seed=3)


def test_export_hides_systems_and_shuffles(exported):
    sheet, key = exported
    text = sheet.read_text(encoding="utf-8")
    assert not any(s in text for s in (*SYSTEMS, "human,"))
    df = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert tuple(df.columns) == he.SHEET_COLUMNS and len(df) == 18  # 6 examples x (2 systems + human)
    assert (df["rating"] == "").all()
    assert df["row_id"].tolist() == [f"R{i:03d}" for i in range(1, 19)]  # ids follow the shuffled order
    k = pd.read_csv(key, dtype=str)
    assert sorted(k["system"].unique()) == ["Alphabot", "Betabot", "human"]
    unshuffled = [r["system"] for r in he.build_rating_rows(samples())]
    assert k["system"].tolist() != unshuffled
    assert (sheet.parent / "rating_instructions.md").read_text().count("**") == 8  # four scale points
    again = he.export_rating_sheet(samples(), sheet.parent / "b.csv", key.parent / "b.csv", seed=3)
    assert again[0].read_text() == text  # same seed, same sheet
    row = df.iloc[0]
    assert row["context"].splitlines()[-1].startswith("partner: question")


def test_round_trip_distribution_and_wilcoxon(exported, tmp_path):
    sheet, key = exported
    filled = fill(sheet, key, tmp_path / "rater1.csv", rule)
    ratings = he.import_ratings([filled], key)
    assert len(ratings) == 18 and set(ratings["rater"]) == {"rater1"}
    dist = he.rating_distribution(ratings).set_index("system")
    assert dist.loc["Alphabot", "4 (%)"] == 100.0 and dist.loc["Alphabot", "average"] == 4.0
    assert dist.loc["Betabot", "2 (%)"] == pytest.approx(500 / 6)
    assert dist.loc["Betabot", "3 (%)"] == pytest.approx(100 / 6)
    assert dist.loc["Betabot", "average"] == pytest.approx(13 / 6)
    assert dist.index.tolist() == ["Alphabot", "human", "Betabot"]  # sorted by average
    w = he.wilcoxon_pair(ratings, "Alphabot", "Betabot")
    # six positive differences, none zero: W = 0, exact two-sided p = 2 / 2**6
    assert w["n_examples"] == 6 and w["n_nonzero"] == 6
    assert w["statistic"] == 0.0 and w["p_value"] == pytest.approx(2 / 64)
    pw = he.pairwise_wilcoxon(ratings)
    assert len(pw) == 3 and set(pw["system_a"]) | set(pw["system_b"]) == {"Alphabot", "Betabot", "human"}


def test_two_raters_are_averaged_per_example_before_the_test(exported, tmp_path):
    sheet, key = exported
    r1 = fill(sheet, key, tmp_path / "r1.csv", rule)
    r2 = fill(sheet, key, tmp_path / "r2.csv", lambda s, e: 4 if s == "Betabot" else rule(s, e))
    ratings = he.import_ratings([r1, r2], key)
    assert len(ratings) == 36 and set(ratings["rater"]) == {"r1", "r2"}
    w = he.wilcoxon_pair(ratings, "Alphabot", "Betabot")  # Betabot per example: (2+4)/2 = 3, or (3+4)/2
    assert w["mean_b"] == pytest.approx((5 * 3 + 3.5) / 6) and w["p_value"] == pytest.approx(2 / 64)


def test_identical_ratings_give_p_one(exported, tmp_path):
    sheet, key = exported
    ratings = he.import_ratings([fill(sheet, key, tmp_path / "r.csv", lambda s, e: 3)], key)
    w = he.wilcoxon_pair(ratings, "Alphabot", "Betabot")
    assert w["n_nonzero"] == 0 and w["p_value"] == 1.0


@pytest.mark.parametrize("bad, message", [("5", r"rating '5' is not one of 1, 2, 3, 4"),
                                          ("", "rating empty is not one of"),
                                          ("3.5", r"rating '3.5' is not one of")])
def test_bad_rating_names_file_line_and_row(exported, tmp_path, bad, message):
    sheet, key = exported
    filled = fill(sheet, key, tmp_path / "bad.csv", rule)
    df = pd.read_csv(filled, dtype=str, keep_default_na=False)
    df.loc[4, "rating"] = bad
    df.to_csv(filled, index=False)
    rid = df.loc[4, "row_id"]
    with pytest.raises(ValueError, match=rf"bad\.csv: line \d+ \(row id {rid}\): {message}"):
        he.import_ratings([filled], key)


def test_sheet_rows_must_match_the_key(exported, tmp_path):
    sheet, key = exported
    filled = fill(sheet, key, tmp_path / "f.csv", rule)
    df = pd.read_csv(filled, dtype=str, keep_default_na=False)
    df.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match=r"short\.csv: 1 row\(s\) of the key are missing"):
        he.import_ratings([tmp_path / "short.csv"], key)
    df.loc[0, "row_id"] = "R999"
    df.to_csv(tmp_path / "alien.csv", index=False)
    with pytest.raises(ValueError, match=r"alien\.csv: row id R999 is not in the key"):
        he.import_ratings([tmp_path / "alien.csv"], key)
    df.drop(columns=["rating"]).to_csv(tmp_path / "norating.csv", index=False)
    with pytest.raises(ValueError, match=r"norating\.csv: line 1: the header lacks column\(s\) \['rating'\]"):
        he.read_rating_sheet(tmp_path / "norating.csv")


def test_export_refuses_same_file_and_empty_samples(tmp_path):
    with pytest.raises(ValueError, match="different files"):
        he.export_rating_sheet(samples(), tmp_path / "x.csv", tmp_path / "x.csv")
    with pytest.raises(ValueError, match="no samples"):
        he.export_rating_sheet([], tmp_path / "a.csv", tmp_path / "b.csv")


def test_cli_prints_table2(exported, tmp_path, capsys):
    sheet, key = exported
    filled = fill(sheet, key, tmp_path / "r.csv", rule)
    assert human_eval_cli([str(filled), "--key", str(key)]) == 0
    out = capsys.readouterr().out
    assert "Alphabot" in out and "p_value" in out
    assert cli.main(["human-eval", str(sheet), "--key", str(key)]) == 2  # the unfilled sheet: a one-line error
    assert "rating empty" in capsys.readouterr().err
