"""The docs run: every ```python block of README.md and docs/*.md, and the API reference is current.

The blocks of one file run in order, in one namespace, in a fresh Python process started
in a temporary directory (files a block writes land there). A block whose first line is
``# not run`` is skipped: keep that for code that cannot run here, such as Keras.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = "# not run"
# The README's Scale block builds a data x fsdp mesh (fsdp=2): give its process 2 fake CPU devices.
DEVICES = {"README.md": 2}

RUNNER = r"""
import json, sys, traceback
DONE = "EVERY BLOCK RAN"
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for number, (line, code) in enumerate(blocks, 1):
    print(f"--- block {number} (line {line})", flush=True)
    try:
        exec(compile(code, f"{sys.argv[2]}:{line}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: block {number} of {sys.argv[2]}, starting at line {line}", file=sys.stderr)
        sys.exit(1)
print(DONE)
"""


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each ```python block to run, in order."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        code = match.group(1)
        if code.lstrip().startswith(SKIP):
            continue
        blocks.append((text.count("\n", 0, match.start(1)) + 1, code))
    return blocks


def test_blocks_are_found():
    names = {path.name for path in DOCS}
    assert {"README.md", "concepts.md", "from-the-lecture.md", "howtos.md", "course-map.md", "api.md"} <= names
    assert len(python_blocks(ROOT / "README.md")) >= 3
    assert len(python_blocks(ROOT / "docs" / "from-the-lecture.md")) >= 3
    keras = (ROOT / "docs" / "from-the-lecture.md").read_text()
    assert "model.add(Dense(H, input_dim=N))" in keras and "validation_split=0.2" in keras


def run_blocks(path: Path, directory: Path) -> subprocess.CompletedProcess:
    """Runs ``path``'s python blocks in order, in one namespace, in a fresh process in ``directory``."""
    blocks = directory / "blocks.json"
    blocks.write_text(json.dumps(python_blocks(path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if path.name in DEVICES:
        env["XLA_FLAGS"] = (
            f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES[path.name]}".strip()
        )
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(blocks), path.name],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


RUNNABLE = [p for p in DOCS if python_blocks(p)]


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory):
    """Every file's run, started two at a time as soon as the first test asks (most of the time is compiling)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {path.name: pool.submit(run_blocks, path, tmp_path_factory.mktemp(path.stem)) for path in RUNNABLE}


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_python_blocks_run(path, doc_runs):
    done = doc_runs[path.name].result()
    finished = done.stdout.rstrip().splitlines()[-1:] == ["EVERY BLOCK RAN"]  # no block ended the process early
    assert done.returncode == 0 and finished, f"{path.name}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_the_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Docs") : readme.index("## The contract")]
    for page in ("concepts.md", "from-the-lecture.md", "howtos.md", "course-map.md", "api.md"):
        assert f"docs/{page}" in section
        assert (ROOT / "docs" / page).is_file()


def test_local_links_in_the_docs_point_to_files():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_api_reference_is_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr + "\nregenerate it: python scripts/make_api_docs.py"


def test_api_reference_is_stable_and_complete(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_api_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    text = make_api_docs.formatted(make_api_docs.render())  # what the script writes
    assert text == make_api_docs.formatted(make_api_docs.render())
    assert not re.search(r"0x[0-9a-f]{6,}", text), "a memory address in the API reference"
    for name in (
        "fundl.dense",
        "fundl.serial",
        "fundl.train.fit",
        "fundl.train.evaluate",
        "fundl.train.predict",
        "fundl.train.history_arrays",
        "fundl.datasets.train_validation_split",
        "fundl.losses.softmax_cross_entropy",
        "fundl.models.mlp",
        "fundl.runs.save_train_state",
        "fundl.distributed.data_mesh",
    ):
        assert f"### `{name}`" in text, name
    # --check fails on a stale file
    stale = tmp_path / "api.md"
    stale.write_text(text + "\nedited by hand\n")
    original = make_api_docs.OUTPUT
    make_api_docs.OUTPUT = stale
    try:
        assert make_api_docs.main(["--check"]) == 1
        stale.write_text(text)
        assert make_api_docs.main(["--check"]) == 0
    finally:
        make_api_docs.OUTPUT = original
