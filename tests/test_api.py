"""The public API of `chitchat/__init__.py`: every name resolves, `import chitchat` stays light, and
the README's Python example runs as written."""

from __future__ import annotations

import inspect
import re
import subprocess

import pytest

import chitchat
from chitchat.cli import COMMANDS, build_parser
from support import PYTHON, ROOT, cli_env


def _run(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter of the project's virtualenv, from the checkout's root."""
    return subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_import_chitchat_does_not_import_torch():
    done = _run("import sys, chitchat; chitchat.__version__; chitchat.ChitchatError; "
                "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_imports():
    # A name moved to another module fails here, by name, rather than in a user's program.
    expected = {"Engine", "ReplySettings", "Scoring", "register_scoring", "load_model", "save_model", "preprocess",
                "PreprocessConfig", "train", "TrainConfig", "evaluate", "EvalConfig", "ensure_default_model",
                "ChitchatError", "__version__"}
    assert set(chitchat.__all__) == expected
    for name in chitchat.__all__:
        value = getattr(chitchat, name)
        assert value is not None, name
        if name != "__version__":
            assert value.__name__ == name, name
            assert value.__module__ == chitchat._EXPORTS[name], (name, value.__module__)  # where it is defined
    namespace: dict = {}
    exec("from chitchat import *", namespace)
    assert expected <= set(namespace)
    assert expected <= set(dir(chitchat))


def test_functions_are_not_shadowed_by_subpackages():
    # `chitchat.eval` and `chitchat.training` are subpackages; `evaluate`, `train` and `preprocess`
    # are functions, also after their modules are imported by their full names.
    import chitchat.eval.evaluate  # noqa: F401
    import chitchat.tokens.preprocess  # noqa: F401
    import chitchat.training  # noqa: F401

    for name in ("evaluate", "train", "preprocess", "load_model", "ensure_default_model"):
        assert inspect.isfunction(getattr(chitchat, name)), name
    assert issubclass(chitchat.ChitchatError, Exception)
    assert chitchat.ReplySettings().validate() == chitchat.ReplySettings()


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        chitchat.no_such_name  # noqa: B018
    assert not hasattr(chitchat, "Trainer")


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "import chitchat" in b]
    assert blocks, "README.md has no ```python block with `import chitchat`"
    return blocks[0]


def test_readme_example_is_five_lines():
    code = [line for line in readme_example().splitlines() if line.strip()]
    assert len(code) <= 5, code


@pytest.mark.slow
def test_readme_example_replies_with_the_shipped_model():
    done = _run(readme_example())
    assert done.returncode == 0, done.stderr
    reply = done.stdout.strip()
    assert reply, done.stderr
    assert re.search(r"[\u4e00-\u9fff]", reply), reply  # a Chinese reply, not a repr or a number


def test_readme_command_examples_parse():
    # The table of commands: one example per command, each accepted by that command's parser.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    examples = dict(re.findall(r"^\| `([\w-]+)` \|.*\| `chitchat \1 ([^`]*)` \|$", text, flags=re.M))
    assert set(examples) >= set(COMMANDS) - {"vocab"}, sorted(examples)
    for command, args in examples.items():
        args = args.split()
        parsed = build_parser(command).parse_args([command, *args])
        assert parsed.command == command


def test_readme_is_a_front_page_whose_links_resolve():
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) < 10_000  # the rest belongs in docs/
    text = readme.read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link]
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
