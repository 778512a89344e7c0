"""Specification of the data layer: readers, errors, split, candidates, persona pool, checksums, CLI.

Fixtures in ``tests/fixtures/`` are made up for these tests. Real-data checks read ``P2BOT_DATA_DIR``
(e.g. ``/work/shared/data/convai2-valid-dev``) and are skipped when it is unset.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.error
from pathlib import Path

import pytest

from p2bot_utils import data, data_files
from p2bot_utils.data import (SILENCE, DataFormatError, Episode, PersonaEntry, Turn, dataset_stats,
                              load_split_data, persona_groups, read_episodes, read_hf_json, read_parlai,
                              sample_candidates, sample_data_dir, split_by_group)
from p2bot_utils import cli
from p2bot_utils.cli import data_stats as stats_main

FIX = Path(__file__).parent / "fixtures"
REAL = os.environ.get("P2BOT_DATA_DIR")


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    """Unit tests never see a real data folder unless they ask for it."""
    monkeypatch.delenv("P2BOT_DATA_DIR", raising=False)


# --- ParlAI text format ------------------------------------------------------------------------------------
def test_both_with_candidates_and_silence():
    eps = read_parlai(FIX / "parlai_both_cands.txt")
    assert [e.episode_id for e in eps] == ["parlai_both_cands:0", "parlai_both_cands:1"]
    a, b = eps
    assert a.own_persona == ("i keep bees in my backyard.", "i am a night owl.", "my car is bright yellow.")
    assert a.partner_persona == ("i am a potter.", "i live on a boat.")
    assert a.turns[0] == Turn("hello , anyone awake ?", "yes , i am a night owl . just checked on my bees .",
                              ("do you like tea ?", "the sea is calm today .",
                               "yes , i am a night owl . just checked on my bees ."))
    assert a.candidate_source == "official" and a.meta["line"] == 1
    assert b.turns[0].partner == SILENCE and len(b.turns) == 3 and b.meta["line"] == 8
    assert all(t.candidates[-1] == t.reply for e in eps for t in e.turns)


def test_self_other_none_variants():
    own = read_parlai(FIX / "parlai_self_no_cands.txt")
    assert own[1].own_persona == ("i am a potter.", "i live on a boat.") and own[1].partner_persona == ()
    assert own[0].candidate_source == "none" and own[0].turns[1].candidates == ()
    other = read_parlai(FIX / "parlai_other_revised_no_cands.txt")
    assert other[0].own_persona == () and other[0].partner_persona[0] == "i make things out of clay."
    none = read_parlai(FIX / "parlai_none_no_cands.txt")
    assert [len(e.turns) for e in none] == [2, 2] and none[1].turns[0].partner == SILENCE
    assert none[1].own_persona == none[1].partner_persona == ()
    # the same dialogues whatever the persona variant
    assert [t.reply for t in none[0].turns] == [t.reply for t in own[0].turns]


def test_file_name_gives_variant_meta(tmp_path):
    p = tmp_path / "valid_other_revised_no_cands.txt"
    shutil.copy(FIX / "parlai_other_revised_no_cands.txt", p)
    meta = read_episodes(p)[0].meta
    assert (meta["split"], meta["personas"], meta["revision"], meta["file_candidates"]) == \
        ("valid", "other", "revised", False)


def test_hf_json():
    eps = read_hf_json(FIX / "hf_personachat.json")
    assert [e.episode_id for e in eps] == ["hf_personachat:train:0", "hf_personachat:valid:0"]
    tr, va = eps
    assert tr.own_persona == ("i keep bees in my backyard .", "i am a night owl .") and tr.partner_persona == ()
    assert [(t.partner, t.reply) for t in tr.turns] == [("hello , anyone awake ?", "yes , i am a night owl ."),
                                                        ("bees ? at night ?", "they are asleep , but i like the hive .")]
    assert tr.turns[1].candidates == ("the sea is calm .", "they are asleep , but i like the hive .")
    assert va.turns[0].partner == SILENCE and va.meta["split"] == "valid" and tr.candidate_source == "official"
    assert read_episodes(FIX / "hf_personachat.json") == eps


# --- bad input: DataFormatError "path:line: what" ---------------------------------------------------------
GOOD = "1 your persona: i like tea.\n2 hi\thello\n3 how are you ?\tfine\n"
BAD = {
    "bad numbering": ("1 your persona: i like tea.\n3 hi\thello\n", 2, "bad numbering: expected 2"),
    "no number": ("1 your persona: i like tea.\nhi\thello\n", 2, "bad numbering"),
    "missing tab": ("1 your persona: i like tea.\n2 hi hello\n", 2, "missing tab"),
    "empty reply": ("1 hi\thello\n2 how are you ?\t \n", 2, "empty reply"),
    "gold not last": ("1 hi\thello\t\thello|bye\n", 1, "is not the reply"),
    "persona after turns": ("1 hi\thello\n2 your persona: i like tea.\n", 2, "persona line after"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_and_line(tmp_path, case):
    text, line, what = BAD[case]
    p = tmp_path / "bad.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError, match=what) as err:
        read_parlai(p)
    assert str(err.value).startswith(f"{p}:{line}: ")


def test_non_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(GOOD.encode() + "4 caf\xe9 ?\tyes\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=f"^{p}:4: not UTF-8"):
        read_parlai(p)


def test_good_text_parses(tmp_path):
    p = tmp_path / "good.txt"
    p.write_text(GOOD, encoding="utf-8")
    assert read_parlai(p) == [Episode("good:0", ("i like tea.",), (), (Turn("hi", "hello"), Turn("how are you ?", "fine")))]


def test_hf_json_bad_history_and_syntax(tmp_path):
    obj = json.loads((FIX / "hf_personachat.json").read_text())
    obj["train"][0]["utterances"][1]["history"] = ["only one entry"]
    p = tmp_path / "personachat_self_original.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(DataFormatError, match=r"train\[0\]\.utterances\[1\]: history must grow"):
        read_hf_json(p)
    p.write_text('{"train": [\n  {"personality": []}\n  oops\n]}')
    with pytest.raises(DataFormatError, match=f"^{p}:3: invalid JSON"):
        read_hf_json(p)


def test_cli_bad_file_one_line_no_output(tmp_path, capsys):
    p = tmp_path / "valid_self_original_no_cands.txt"
    p.write_text(BAD["missing tab"][0], encoding="utf-8")
    assert cli.main(["data-stats", str(tmp_path)]) == 2  # cli.main holds the one error path
    out, err = capsys.readouterr()
    assert out == "" and err.strip().count("\n") == 0 and f"{p}:2: missing tab" in err


def test_cli_counts(tmp_path, capsys):
    shutil.copy(FIX / "parlai_both_cands.txt", tmp_path / "valid_both_original.txt")
    assert stats_main([str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    # 5 turn pairs; one __SILENCE__ opener is not an utterance: 2 x 5 - 1
    assert (row["episodes"], row["turn_pairs"], row["utterances"], row["silence_openers"]) == (2, 5, 9, 1)
    assert row["candidates_per_turn"] == "3" and row["persona_groups"] == 2
    assert row["checksum"].startswith("partial/modified copy")
    assert stats_main([str(tmp_path)]) == 0 and "valid_both_original.txt" in capsys.readouterr().out


# --- persona groups and the split --------------------------------------------------------------------------
def test_persona_groups_by_hand():
    personas = [("a.", "b.", "c.", "d."), ("A", "b", "c", "e."),  # 3 shared (case and period ignored)
                ("a.", "b.", "x.", "y."),                          # only 2 shared with the first: own group
                ("x.", "y.", "z.", "a."), ("e.", "c.", "b.", "q.")]  # joins 3rd; joins 2nd (transitively 1st)
    assert persona_groups(personas) == ["pg0000", "pg0000", "pg0001", "pg0001", "pg0000"]


def test_split_by_group_hits_fractions_without_straddling():
    groups = [f"g{i // 3}" for i in range(30)]  # 10 groups of 3 episodes
    parts = split_by_group(groups, (0.8, 0.1, 0.1), seed=0)
    assert [parts.count(k) for k in range(3)] == [24, 3, 3]
    assert all(len({p for g, p in zip(groups, parts) if g == grp}) == 1 for grp in set(groups))
    assert parts == split_by_group(groups, (0.8, 0.1, 0.1), seed=0)
    assert parts != split_by_group(groups, (0.8, 0.1, 0.1), seed=1)
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_group(groups, (0.8, 0.3, 0.1))


def _ids(split):
    return {part: [e.meta["index"] for e in getattr(split, part)] for part in ("train", "dev", "test")}


def test_sample_split_is_deterministic_and_leak_free():
    s = load_split_data(use_sample=True, seed=0)
    assert s.source == "sample" and s.info["split_method"] == "persona-group"
    assert all(len(getattr(s, p)) > 0 for p in ("train", "dev", "test"))
    groups = {p: {e.meta["persona_group"] for e in getattr(s, p)} for p in ("train", "dev", "test")}
    assert not (groups["train"] & groups["dev"] or groups["train"] & groups["test"] or groups["dev"] & groups["test"])
    assert _ids(s) == _ids(load_split_data(use_sample=True, seed=0))
    assert _ids(s) == _ids(load_split_data(use_sample=True, seed=0, mode="revised"))
    rev = load_split_data(use_sample=True, seed=0, mode="revised")
    assert rev.train[0].own_persona != s.train[0].own_persona  # paraphrased persona lines, same dialogue
    assert [t.reply for t in rev.train[0].turns] == [t.reply for t in s.train[0].turns]
    assert [t.candidates for t in rev.dev[0].turns] == [t.candidates for t in s.dev[0].turns]


# --- response candidates -----------------------------------------------------------------------------------
def test_sampled_candidates_exclude_gold_and_are_reproducible():
    eps = data.read_parlai(sample_data_dir() / "valid_self_original_no_cands.txt")
    a, b = sample_candidates(eps, n=20, seed=3), sample_candidates(eps, n=20, seed=3)
    assert a == b and [t.candidates for t in a[0].turns] == [t.candidates for t in b[0].turns]
    assert a[0].turns[0].candidates != sample_candidates(eps, n=20, seed=4)[0].turns[0].candidates
    replies = [{t.reply for t in e.turns} for e in eps]
    for i, e in enumerate(a):
        others = set().union(*(r for j, r in enumerate(replies) if j != i))
        assert e.candidate_source == "sampled"
        for t in e.turns:
            assert len(t.candidates) == 20 and t.candidates[-1] == t.reply
            assert t.reply not in t.candidates[:-1] and len(set(t.candidates)) == 20
            assert set(t.candidates[:-1]) <= others  # drawn from OTHER episodes


def test_sampled_candidates_too_few_replies():
    eps = [Episode(f"e:{i}", (), (), (Turn("hi", f"reply {i}"),)) for i in range(3)]
    with pytest.raises(ValueError, match="distinct replies"):
        sample_candidates(eps, n=20)
    topped = sample_candidates(eps, n=4, extra_replies=["x", "y", "z"])
    assert topped[0].turns[0].candidates[-1] == "reply 0" and topped[0].meta["candidate_pool"].startswith("topped")


def test_official_candidates_kept():
    eps = read_parlai(FIX / "parlai_both_cands.txt")
    assert sample_candidates(eps, n=20) == eps


# --- official split and persona pool sources ----------------------------------------------------------------
def _official_dir(tmp_path):
    shutil.copy(FIX / "parlai_both_cands.txt", tmp_path / "train_both_original.txt")
    shutil.copy(sample_data_dir() / "valid_both_original_no_cands.txt", tmp_path / "valid_both_original_no_cands.txt")
    return tmp_path


def test_official_split_and_pool_from_training(tmp_path):
    s = load_split_data(_official_dir(tmp_path))
    assert s.info["split_method"] == "official" and s.source == "real"
    assert len(s.train) == 2 and s.train[0].candidate_source == "official"
    assert len(s.dev) + len(s.test) == 30 and s.dev[0].candidate_source == "sampled"
    assert not {e.meta["persona_group"] for e in s.dev} & {e.meta["persona_group"] for e in s.test}
    assert s.info["persona_pool"]["source"] == "official training split"
    assert PersonaEntry("train:pg0000", s.train[0].own_persona) in s.persona_pool
    full = load_split_data(tmp_path, official_test="full")
    assert len(full.test) == 30 and _ids(full)["dev"] == _ids(s)["dev"]


def test_pool_from_clusters_then_train_part(tmp_path):
    s = load_split_data(use_sample=True, persona_clusters=FIX / "persona_clusters.json")
    assert s.persona_pool[:2] == [PersonaEntry("7", ("i like kites.", "i have a green bike.", "i eat plums.")),
                                  PersonaEntry("7", ("i like kites.", "i have a green bike.", "i sell plums."))]
    assert s.info["persona_pool"]["groups"] == 2
    assert load_split_data(use_sample=True).info["persona_pool"]["source"].startswith("persona clusters")
    d = tmp_path / "only_dialogues"
    d.mkdir()
    for name in ("valid_both_original_no_cands.txt", "valid_both_revised_no_cands.txt"):
        shutil.copy(sample_data_dir() / name, d / name)
    s = load_split_data(d)
    assert s.info["persona_pool"]["source"] == "train part of the split"
    assert {p.group for p in s.persona_pool} == {e.meta["persona_group"] for e in s.train}


def test_hf_json_folder_gives_official_split(tmp_path):
    shutil.copy(FIX / "hf_personachat.json", tmp_path / "personachat_self_original.json")
    s = load_split_data(tmp_path, n_candidates=2)
    assert s.info["split_method"] == "official" and [len(s.train), len(s.dev) + len(s.test)] == [1, 1]
    assert s.train[0].turns[1].candidates[-1] == s.train[0].turns[1].reply
    assert s.persona_pool == [PersonaEntry("train:pg0000", s.train[0].own_persona)]


def test_revised_needs_same_episodes(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(sample_data_dir() / "valid_both_original_no_cands.txt", d / "valid_both_original_no_cands.txt")
    with pytest.raises(FileNotFoundError, match="valid_both_revised"):
        load_split_data(d, mode="revised")
    (d / "valid_both_revised_no_cands.txt").write_text(GOOD, encoding="utf-8")
    with pytest.raises(DataFormatError, match="must hold the same episodes"):
        load_split_data(d, mode="revised")
    with pytest.raises(ValueError, match="mode must be"):
        load_split_data(d, mode="both")


# --- locating, downloading, verifying ------------------------------------------------------------------------
def _facts(payload: bytes) -> dict:
    return {"bytes": len(payload), "md5": hashlib.md5(payload).hexdigest(),
            "sha256": hashlib.sha256(payload).hexdigest()}


def test_verify_file(tmp_path):
    p = tmp_path / "valid_self_original.txt"
    p.write_bytes(b"tiny")
    assert data_files.verify_file(p, {p.name: _facts(b"tiny")}) is True
    assert data_files.verify_file(p, {p.name: _facts(b"tinY")}) is False  # same size, other MD5
    assert data_files.verify_file(p, {"other.txt": _facts(b"tiny")}) is None
    assert data_files.verify_file(p) is False  # shipped facts: the official file is 9 MB
    facts = data_files.known_facts()
    assert facts["convai2_fix_723.tgz"]["sha256"].startswith("d0ae89de") and "train_self_revised.txt" in facts


def _tgz(tmp_path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(FIX / "parlai_self_no_cands.txt", arcname="valid_self_original_no_cands.txt")
    return buf.getvalue()


def test_download_checksum_mismatch_deletes(tmp_path, monkeypatch, capsys):
    payload = _tgz(tmp_path)
    monkeypatch.setattr(data_files, "fetch_url", lambda url, dest: Path(dest).write_bytes(payload))
    with pytest.raises(data_files.ChecksumError, match="does not match"):
        data_files.download_archive(tmp_path / "data", facts=_facts(payload + b"!"))
    assert list((tmp_path / "data").iterdir()) == []
    bad = {data_files.ARCHIVE_NAME: _facts(b"something else")}
    assert data_files.locate_data_dir(download=True, root=tmp_path, facts=bad) == (None, "none")
    assert "ChecksumError" in capsys.readouterr().err and not (tmp_path / "data" / data_files.ARCHIVE_NAME).exists()


def test_download_good_archive_is_extracted(tmp_path, monkeypatch):
    payload = _tgz(tmp_path)
    monkeypatch.setattr(data_files, "fetch_url", lambda url, dest: Path(dest).write_bytes(payload))
    d, how = data_files.locate_data_dir(download=True, root=tmp_path, facts={data_files.ARCHIVE_NAME: _facts(payload)})
    assert how == "download" and d == tmp_path / "data" / "ConvAI2"
    assert len(read_parlai(d / "valid_self_original_no_cands.txt")) == 2
    assert data_files.locate_data_dir(download=False, root=tmp_path) == (d, "local")


def test_offline_falls_back_to_sample(tmp_path, monkeypatch, capsys):
    def offline(url, dest):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(data_files, "fetch_url", offline)
    monkeypatch.setattr(data_files, "repo_root", lambda: tmp_path)
    assert data_files.locate_data_dir(download=True) == (None, "none")
    err = capsys.readouterr().err  # on stderr: a command's stdout may be JSON
    assert err.count("\n") == 1 and "P2BOT_DATA_DIR" in err
    s = load_split_data(download=True)
    assert s.source == "sample" and "SAMPLE" in capsys.readouterr().err


def test_locate_order_explicit_then_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "ConvAI2", tmp_path / "b"
    a.mkdir(parents=True)
    b.mkdir()
    shutil.copy(FIX / "parlai_self_no_cands.txt", a / "valid_self_original_no_cands.txt")
    shutil.copy(FIX / "parlai_self_no_cands.txt", b / "valid_self_original_no_cands.txt")
    monkeypatch.setenv("P2BOT_DATA_DIR", str(b))
    assert data_files.locate_data_dir(tmp_path / "a") == (a, "explicit")
    assert data_files.locate_data_dir() == (b, "env")
    with pytest.raises(FileNotFoundError, match="no PERSONA-CHAT"):
        data_files.locate_data_dir(tmp_path)


# --- real data (skipped without P2BOT_DATA_DIR) ----------------------------------------------------------------
@pytest.mark.skipif(not REAL, reason="set P2BOT_DATA_DIR to a ConvAI2 folder to run the real-data checks")
def test_real_dev_counts():
    files = sorted(p for p in Path(REAL).iterdir() if p.suffix == ".txt")
    assert len(files) == 7
    for p in files:
        st = dataset_stats(p)
        assert (st["episodes"], st["turn_pairs"], st["utterances"]) == (812, 6337, 12674), p.name


@pytest.mark.skipif(not REAL, reason="set P2BOT_DATA_DIR to a ConvAI2 folder to run the real-data checks")
def test_real_split(monkeypatch):
    monkeypatch.setenv("P2BOT_DATA_DIR", REAL)
    s = load_split_data()
    assert s.source == "real" and s.info["found_by"] == "env" and s.info["split_method"] == "persona-group"
    assert len(s.train) + len(s.dev) + len(s.test) == 812
    assert all(v.startswith("partial/modified") for v in s.info["verification"].values())
    assert abs(len(s.train) / 812 - 0.8) < 0.05 and all(len(t.candidates) == 20 for t in s.test[0].turns)
