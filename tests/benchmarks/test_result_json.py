import json
import sys

import pytest
from benchmark_scripts import load_benchmark


def _load():
    return load_benchmark("result_json")


def test_the_command_line_names_the_script_and_its_arguments_without_a_trailing_space(
        monkeypatch):
    rj = _load()
    assert rj.script_command("speed.py", []) == "python benchmarks/speed.py"
    assert rj.script_command("speed.py", ["--model", "resnet20"]) == (
        "python benchmarks/speed.py --model resnet20")
    monkeypatch.setattr(sys, "argv", ["speed.py", "--iters", "5"])
    assert rj.script_command("speed.py", None) == "python benchmarks/speed.py --iters 5"


def test_commands_keep_their_order_take_the_old_single_command_and_list_each_once():
    rj = _load()
    assert rj.commands_with({}, "c") == ["c"]
    assert rj.commands_with({"command": "a"}, "c") == ["a", "c"]
    assert rj.commands_with({"commands": ["a", "b", "c"]}, "a") == ["b", "c", "a"]


def test_a_result_is_written_in_a_new_folder_and_read_back(tmp_path, capsys):
    rj = _load()
    path = tmp_path / "new" / "r.json"
    assert rj.write_result(path, {"rows": [{"top1": 91.5}]}) == path
    assert path.read_text().endswith("}\n")
    assert rj.read_result(path) == {"rows": [{"top1": 91.5}]}
    assert rj.read_earlier(path) == {"rows": [{"top1": 91.5}]}
    assert str(path) in capsys.readouterr().err
    assert rj.read_earlier(tmp_path / "absent.json") == {}


def test_a_broken_earlier_result_stops_the_script_naming_it_and_stays_as_it_was(tmp_path):
    levers = load_benchmark("levers")
    out = tmp_path / "levers_x.json"
    out.write_text('{"rows": [')
    row = {"model": "resnet20", "setting": "W2A4", "variant": "a", "seeds": [0], "top1": [90.0]}
    with pytest.raises(SystemExit, match=r"levers_x\.json: unreadable.*git checkout"):
        levers.write_results(out, "x", [row], "cmd a")
    assert out.read_text() == '{"rows": ['
    out.write_text(json.dumps([1]))
    with pytest.raises(SystemExit, match="JSON list, not an object"):
        levers.write_results(out, "x", [row], "cmd a")
