"""`experiments.run_record`: one writer and one reader of a run's config.json."""

import pytest

from experiments import run_record


def test_written_whole_and_read_back(tmp_path):
    run_record.write(tmp_path / "run", "ptb", "python -m experiments.ptb", {"commit": "abc"},
                     {"train": {"seed": 1}})
    assert run_record.read(tmp_path / "run") == {
        "task": "ptb", "command": "python -m experiments.ptb", "provenance": {"commit": "abc"},
        "config": {"train": {"seed": 1}}}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]  # no temp file


@pytest.mark.parametrize("text, why", [
    ('{"task": "ptb", "conf', "Unterminated string"),        # torn
    ("[1, 2]", "a JSON list, not an object"),
    ('{"task": "ptb"}', "no 'config' entry"),
    ('{"config": "x"}', "its config is a str"),
])
def test_anything_else_is_one_sentence_naming_the_file(tmp_path, text, why):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(run_record.NotARunRecord) as info:
        run_record.read(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.json'} is not a run record (")
    assert why in message and message.endswith(").") and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_bytes_that_are_not_utf8_are_one_sentence(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"config": {}, "task": "\xff"}')
    with pytest.raises(run_record.NotARunRecord, match="can't decode byte 0xff"):
        run_record.read(tmp_path)


def test_no_record_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_record.read(tmp_path)
