"""The `circuits` command: version, help, `info` and clean errors."""

import json
import subprocess
import sys

from circuits import __version__
from circuits.cli import main


def test_version_and_help_answer_without_loading_torch():
    code = (
        "import sys; from circuits.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["circuits", __version__, "False"]
    assert main([]) == 0


def test_info_lists_submodules_and_nodes(tiny_model_dir, capsys):
    path = tiny_model_dir("gpt_neox")
    assert main(["info", "--model", str(path), "--dictionaries", "neurons", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    names = [row["submodule"] for row in summary["submodules"]]
    assert names == ["embed", "attn_0", "mlp_0", "resid_0", "attn_1", "mlp_1", "resid_1"]
    assert summary["parallel_attn"] is True
    assert {row["nodes"] for row in summary["submodules"]} == {32 + 1}
    assert summary["total_nodes"] == 7 * 33
    assert main(["info", "--model", str(path), "--dictionaries", "neurons"]) == 0
    text = capsys.readouterr().out
    assert "gpt_neox, 2 layers, d_model 32, parallel attention" in text
    assert "mlp_1" in text and "Identity" in text


def test_errors_are_one_line_and_say_what_to_do(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error:") and "Traceback" not in err
    assert main(["zoo", "info", "--dir", str(tmp_path)]) == 1
    assert "circuits zoo build" in capsys.readouterr().err
