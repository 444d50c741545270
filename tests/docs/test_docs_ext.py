"""The docs' executed-example directives (docs/_ext/bitnet_docs.py), on a
throw-away Sphinx project: a good example renders what it really did, a
failing one fails the build naming the page and line.

Sphinx is the docs extra's (pip install -e ".[docs]"), not the test
extra's: without it these tests skip."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="Sphinx is not installed (the docs extra: pip install -e '.[docs]')")
pytest.importorskip("myst_parser", reason="myst-parser is not installed (the docs extra: pip install -e '.[docs]')")

EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext"

GOOD = """\
# Good

```{bitnet-run}
answer = 41 + 1
print("answer", answer)
```

```{bitnet-run}
:raises: InferenceError
print("before the error")
raise bn.errors.ContextOverflow("too many tokens for n_ctx=8")
```

```{bitnet-file} pkg/values.py
VALUE = 7
```

```{bitnet-run}
from pkg.values import VALUE
print("value", VALUE, "answer", answer)
```

```{bitnet-shell}
cd pkg
python3 -c 'import values; print("shell sees", values.VALUE)'
```

```{bitnet-shell}
:returncode: 3
:filter: ^keep
for word in keep-1 drop-2 keep-3; do echo $word; done; exit 3
```
"""

BAD = """\
# Bad

```{bitnet-run}
:raises: OutOfMemory
raise bn.errors.InferenceError("not the expected class")
```

```{bitnet-shell}
:returncode: 0
echo about to fail; exit 4
```
"""


def build(tmp_path: Path, page: str) -> tuple[subprocess.CompletedProcess[str], str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(EXT)!r})\n"
                                 "extensions = ['myst_parser', 'bitnet_docs']\n")
    (src / "index.md").write_text(page)
    out = tmp_path / "html"
    # A process of its own: Sphinx's logging and docutils' registries are global.
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(out)],
                          capture_output=True, text=True, timeout=120)
    page_html = (out / "index.html").read_text() if (out / "index.html").exists() else ""
    return proc, html.unescape(re.sub(r"<[^>]+>", "", page_html))


def test_good_examples_render_what_they_did(tmp_path: Path) -> None:
    proc, text = build(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stderr
    assert "answer 42" in text
    assert "before the error\nContextOverflow: too many tokens for n_ctx=8" in text  # a subclass of :raises:
    assert "pkg/values.py" in text  # the file's caption
    assert "value 7 answer 42" in text  # blocks share the page's namespace and directory
    assert "$ cd pkg\n$ python3 -c" in text and "shell sees 7" in text
    assert "exit 3\nkeep-1\n...\nkeep-3" in text and "\ndrop-2" not in text


def test_failing_examples_fail_the_build_at_their_line(tmp_path: Path) -> None:
    proc, _ = build(tmp_path, BAD)
    assert proc.returncode != 0
    assert "index.md:3: ERROR: bitnet-run example failed: expected OutOfMemory, got InferenceError" in proc.stderr
    assert "index.md:8: ERROR: bitnet-shell example failed: `echo about to fail; exit 4` exited 4, expected 0" in proc.stderr
