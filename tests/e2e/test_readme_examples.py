"""README examples run as written: the code blocks are taken from README.md itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, ServerProcess

README = (ROOT / "README.md").read_text()


def block_after(marker: str, lang: str = "python") -> str:
    """The first fenced ``lang`` block of README.md that starts with ``marker`` or follows it."""
    start = README.index(marker)
    match = re.compile(rf"```{lang}\n(.*?)```", re.DOTALL).search(README, start - len(lang) - 4)
    assert match, f"no {lang} block at {marker!r}"
    return match.group(1)


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + 1)
    return README[start:end]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_your_own_errors(tmp_path: Path) -> None:
    text = section("### Your own errors")
    (tmp_path / "kv.py").write_text(block_after("# kv.py"))
    client = re.search(r"```python\n(import trio_echo\nfrom kv .*?)```", text, re.DOTALL)
    assert client
    transcript = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert transcript
    lines = transcript.group(1).splitlines()
    assert lines[0] == "$ trio-echo serve --app kv:service &"
    with ServerProcess("--app", "kv:service", cwd=str(tmp_path)) as srv:
        port = str(srv.port)
        assert lines[1] == '$ trio-echo call get nope; echo "exit $?"'
        done = run(
            [sys.executable, "-m", "trio_echo", "call", "--port", port, "get", "nope"], tmp_path
        )
        assert [*done.stderr.splitlines(), f"exit {done.returncode}"] == lines[2:]
        script = client.group(1).replace("7000", port)
        out = run([sys.executable, "-c", script], tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "key_not_found no key 'nope' {'key': 'nope'}\n"
        assert srv.stop() == 0


def test_testing_your_service(tmp_path: Path) -> None:
    """The pytest-trio example runs as written against README's mymodule."""
    (tmp_path / "mymodule.py").write_text(block_after("# mymodule.py"))
    (tmp_path / "test_mymodule.py").write_text(block_after("# test_mymodule.py"))
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_a_shared_client_fixture_in_trio_mode(tmp_path: Path) -> None:
    """The conftest.py fixture example runs as written, with trio_mode on."""
    (tmp_path / "mymodule.py").write_text(block_after("# mymodule.py"))
    both = block_after("# conftest.py")
    conftest, test = both.split("# test_more.py (with trio_mode = true)\n")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_more.py").write_text(test)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    done = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_streams(tmp_path: Path) -> None:
    """The three kinds of stream, served from README's module and called as README calls them."""
    text = section("## Streams: many items in one call")
    (tmp_path / "streams_demo.py").write_text(block_after("# streams_demo.py"))
    client = re.search(r"```python\n(async with trio_echo.open_client.*?)```", text, re.DOTALL)
    assert client
    async_part, _, blocking_part = client.group(1).partition("\nwith trio_echo.connect")
    blocking_part = "with trio_echo.connect" + blocking_part
    with ServerProcess("--app", "streams_demo:service", cwd=str(tmp_path)) as srv:
        body = "\n".join("    " + line for line in async_part.splitlines())
        script = (
            "import trio, trio_echo\n\nasync def main():\n"
            + body
            + "\n\ntrio.run(main)\n"
            + blocking_part
        ).replace("7000", str(srv.port))
        out = run([sys.executable, "-c", script], tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["3", "2", "1", "6.5", "HI", "None", "3", "2", "1"]
        merged = run(
            [sys.executable, "-m", "trio_echo", "call", "--port", str(srv.port), "merged", "2"],
            tmp_path,
        )
        assert merged.returncode == 0, merged.stderr
        assert sorted(json.loads(merged.stdout)) == [f"{i}.{j}" for i in range(2) for j in range(3)]
        assert srv.stop() == 0
