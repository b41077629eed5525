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


def test_zoo_build_never_writes_into_the_package_unless_asked(capsys):
    from circuits.zoo import DATA_DIR

    before = {p: p.stat().st_mtime_ns for p in DATA_DIR.rglob("*") if p.is_file()}
    assert main(["zoo", "build", "--quick"]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert main(["zoo", "build", "--quick", "--in-package"]) == 2
    assert "never replaces the installed one" in capsys.readouterr().err
    assert main(["zoo", "build", "--force"]) == 2
    assert "--in-package" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in DATA_DIR.rglob("*") if p.is_file()} == before


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import circuits.cli.options

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(circuits.cli.options, "load_model", no_work)
    a_file = tmp_path / "taken"
    a_file.write_text("")
    cases = [
        (["discover", "--task", "sva-rc", "--out", str(a_file)], "is a file; give a directory"),
        (["evaluate", str(a_file), "--task", "sva-rc", "--sizes", "5", "--plot", "c.txt"], ".png"),
        (["dashboard", "resid_0/1", "-o", str(tmp_path / "d.txt")], ".html or .json"),
        (["render", str(a_file), "-o", str(tmp_path)], "is a directory; give a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_broken_files_get_one_line_naming_them(tmp_path, capsys):
    import json

    from conftest import save_tiny_model, small_circuit

    model = save_tiny_model("gpt2", tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    small_circuit().save(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"resid_0/7": {"no": "fields"}}))
    out = ["-o", str(tmp_path / "x.svg")]
    cases = [
        (["info", "--model", str(model), "--dictionaries", "neurons"], "truncated or corrupt"),
        (["render", str(tmp_path / "deep.json"), *out], "nested too deeply"),
        (["render", str(tmp_path / "c.json"), *out, "--dashboards", str(tmp_path / "bad.json")],
         "bad.json: not a dashboards file"),
        (["render", str(tmp_path / "c.json"), *out, "--dashboards", str(tmp_path / "odd.json")],
         "'resid_0/7' is not a dashboard"),
    ]  # fmt: skip
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)


def _options(parser, command=""):
    """``(command, action)`` for every option of every (sub)command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{command} {name}".strip())
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield command, action


def test_every_option_has_help_that_shows_its_default():
    import argparse

    from circuits.cli import build_parser

    parser = build_parser()
    for command, action in _options(parser):
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help, f"circuits {command} {name} has no help text"
        shows = action.default in (None, False, argparse.SUPPRESS) or "%(default)" in action.help
        if not shows:
            sub = parser
            for word in command.split():
                sub = next(
                    a for a in sub._actions if isinstance(a, argparse._SubParsersAction)
                ).choices[word]
            text = "".join(sub.format_help().split())  # lines wrap at spaces and hyphens
            assert f"(default:{action.default})".replace(" ", "") in text, (
                f"circuits {command} {name}: default {action.default!r} not in its help"
            )


def test_one_name_for_one_option_across_commands():
    from circuits.cli import build_parser

    seen: dict[str, set[str]] = {}
    for command, action in _options(build_parser()):
        for option in action.option_strings:
            seen.setdefault(option, set()).add(command)
    model_commands = {"info", "discover", "evaluate", "mask", "compare", "ablate", "dashboard"}
    model_commands |= {"shift"}
    for option in ("--device", "--dtype", "--threads", "--no-progress", "--model"):
        assert model_commands <= seen[option], (option, model_commands - seen[option])
    assert "zoo build" in seen["--threads"] and "zoo build" in seen["--no-progress"]
    # Ablation is --ablation everywhere; --top-k means nodes only (dashboards take --contexts).
    assert "--how" not in seen
    assert seen["--top-k"] == {"discover"}
    assert {"evaluate", "mask", "compare", "ablate"} <= seen["--ablation"]


def test_zoo_info_and_help_do_not_import_torch():
    code = (
        "import sys, contextlib, io; from circuits.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['zoo', 'info']) == 0\n"
        "    for argv in (['--help'], ['discover', '--help'], ['zoo', 'build', '--help']):\n"
        "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
        "assert 'Zoo model card' in out.getvalue(), out.getvalue()[:200]\n"
        "print(sorted(m for m in ('torch', 'nnsight', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"]


def test_missing_cuda_and_bad_options_are_one_line(tiny_model_dir, capsys):
    import pytest
    import torch

    path = str(tiny_model_dir("gpt_neox"))
    if not torch.cuda.is_available():
        assert main(["info", "--model", path, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA device" in err and "'cpu'" in err
    assert main(["info", "--model", path, "--device", "tpu9"]) == 2
    assert "unknown device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "--model", path, "--threads", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_dtype_threads_and_no_progress_take_effect(tiny_model_dir, tmp_path):
    path = str(tiny_model_dir("gpt_neox"))
    code = (
        "import sys, torch; from circuits.cli import main\n"
        "from circuits import models\n"
        "seen = {}\n"
        "load = models.load_model\n"
        "def spy(*a, **k):\n"
        "    m = load(*a, **k); seen['dtype'] = str(m.dtype); seen['threads'] = "
        "torch.get_num_threads(); return m\n"
        "models.load_model = spy\n"
        f"assert main(['info', '--model', {path!r}, '--dictionaries', 'neurons', '--json', "
        "'--dtype', 'bfloat16', '--threads', '1', '--no-progress']) == 0\n"
        "print(seen['dtype'], seen['threads'], file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.split() == ["torch.bfloat16", "1"], out.stderr
    assert json.loads(out.stdout)["d_model"] == 32


def test_commands_read_a_circuit_directory(tmp_path, capsys):
    from conftest import small_circuit

    small_circuit().save(tmp_path / "circuit.json")
    assert main(["render", str(tmp_path), "-o", str(tmp_path / "c.dot")]) == 0
    assert (tmp_path / "c.dot").read_text().startswith("digraph")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["render", str(empty), "-o", str(tmp_path / "d.dot")]) == 2
    err = capsys.readouterr().err
    assert "without a circuit.json" in err and "Traceback" not in err
