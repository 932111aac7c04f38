import pytest
import torch

from attnround_pl.torch_files import UnreadableFile, load_tensors


class _Custom:
    pass


def test_reads_tensors_and_gives_one_short_line_otherwise(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    torch.save({"obj": _Custom()}, tmp_path / "obj.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    expected = {"junk.pt": "not a plain file of tensors: Unsupported operand 0",
                "obj.pt": "not a plain file of tensors: Unsupported global: GLOBAL",
                "cut.pt": "failed reading zip archive"}
    for name, text in expected.items():
        with pytest.raises(UnreadableFile) as err:
            load_tensors(tmp_path / name)
        assert text in str(err.value) and "\n" not in str(err.value)
        assert len(str(err.value)) < 200
        assert str(err.value).startswith("is corrupt or not a torch file (")
    with pytest.raises(UnreadableFile, match="^does not exist$"):
        load_tensors(tmp_path / "missing.pt")
