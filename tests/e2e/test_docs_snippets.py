"""Every code block a user would paste, in README.md and docs/*.md, is run here, or is marked as not runnable.

How a block is treated (CONTRIBUTING.md, "Documentation"):

- The README's "Quick start" section (docs/getting-started.md includes it when the site is built) runs exactly
  as written, with only the Redis URL replaced: its files are written into a new directory, its shell lines run
  with bash there (the worker command starts a real `celery -A shop worker`), and the task's own log line is
  awaited in the worker's output.
- Elsewhere, in a directory that holds the quick start's `shop` package: a block captioned with a file name
  (`` `conftest.py`: `` on the line before it) is written to that file; `<!-- run: pytest -->` runs the block's file
  with pytest; `<!-- run: settings -->` executes the block against a Celery `app` (Django-style `CELERY_*` names
  too) and checks it with `celery_redis_stream.config.load_config`; any other Python block runs as a script.
- `<!-- not-run: reason -->` on the line before a block says why it is not run. A block with neither fails.

Every snippet runs against a private redis-server on a free port; the URL `redis://localhost:6379/0` the docs show is
replaced by that server's URL, and nothing else is changed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import ROOT, RedisServer, server_binary, server_fixture, wait_for

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUICK_START_DOCS = [ROOT / "README.md"]  # docs/getting-started.md includes it when the site is built
SHOWN_URL = "redis://localhost:6379/0"
FENCE = re.compile(r"^(\s*)(`{3,})([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!-- (not-run|run): ?(.*?) -->\s*$")
CAPTION = re.compile(r"^\s*`([\w./-]+\.py)`:\s*$")  # the whole line: `shop/tasks.py`:
RUN_KINDS = {"pytest", "settings"}
SCRIPT_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    section: str
    not_run: str | None = None
    run: str | None = None
    caption: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _marker_and_caption(lines: list[str], fence_at: int) -> tuple[str | None, str | None, str | None]:
    """The `<!-- not-run/run -->` marker on the line before a block, and the `file`: caption before that."""
    before = [line for line in lines[:fence_at] if line.strip()][-2:]
    not_run = run = caption = None
    if before:
        marker = MARKER.match(before[-1])
        if marker:
            kind, value = marker.groups()
            if kind == "not-run":
                not_run = value
            else:
                run = value
            before = before[:-1]
        if before:
            captioned = CAPTION.match(before[-1])
            caption = captioned.group(1) if captioned else None
    return not_run, run, caption


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, with their section (the last `## ` heading) and markers."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    section, i = "", 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks, lang = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks)
        text = textwrap.dedent("\n".join(line[len(indent) :] for line in lines[i + 1 : end])) + "\n"
        not_run, run, caption = _marker_and_caption(lines, i)
        caption = caption if lang == "python" else None
        found.append(Block(path, i + 1, lang, text, section, not_run, run, caption))
        i = end + 1
    return found


def in_quick_start(block: Block) -> bool:
    return block.path in QUICK_START_DOCS and block.section == "Quick start"


def clean_env(project: Path, bin_dir: Path) -> dict[str, str]:
    """Our environment without the tests' own settings, the project importable, `celery` and `redis-cli` on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CRS_", "DJANGO_", "REDIS_"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT / "example_project")])
    return env


server = server_fixture(scope="module")


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """`redis-cli` as the docs name it: the server's own CLI (valkey-cli under CRS_SERVER=valkey)."""
    path = tmp_path / "bin"
    path.mkdir()
    (path / "redis-cli").symlink_to(server_binary(1))
    return path


def replaced(text: str, server: RedisServer) -> str:
    return text.replace(SHOWN_URL, server.url_db(0))


class QuickStartWorker:
    """The worker command of a quick start, run by bash as pasted, in its own session so that it stops whole."""

    def __init__(self, command: str, project: Path, env: dict[str, str]) -> None:
        self.log = project / "worker.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", command], cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                return None
        return self.proc.returncode


def _run(argv: list[str], project: Path, env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
    )
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def run_quick_start(doc: Path, project: Path, env: dict[str, str], server: RedisServer) -> QuickStartWorker:
    """Each block of the doc's Quick start in order; returns the worker it started (still running)."""
    worker: QuickStartWorker | None = None
    client = server.client()
    for block in [b for b in blocks(doc) if in_quick_start(b) and b.not_run is None]:
        text = replaced(block.text, server)
        if block.caption:
            (project / block.caption).write_text(text)
        elif block.lang == "sh" and "celery -A shop worker" in text:
            assert text.strip().count("\n") == 0, f"{block.where}: the worker command stands alone"
            worker = _start_worker(text.strip(), project, env, client, block.where)
        elif block.lang == "sh":
            _run(["bash", "-ec", text], project, env, block.where)
        elif block.lang == "python":
            _run([sys.executable, "-c", text], project, env, block.where)
        else:
            raise AssertionError(f"{block.where}: a quick-start block of language {block.lang!r} is not runnable")
    assert worker is not None, f"{doc}: the quick start starts no worker"
    return worker


def _start_worker(command: str, project: Path, env: dict[str, str], client: object, where: str) -> QuickStartWorker:
    """The worker, once it created the group: the group starts at "$", so what is added after this is read."""
    worker = QuickStartWorker(command, project, env)
    wait_for(
        lambda: not worker.alive() or any(g["name"] == b"celery" for g in _groups(client)), 60,
        f"{where}: the worker created the group celery on orders",
    )  # fmt: skip
    assert worker.alive(), f"{where}: the worker stopped:\n{worker.output()}"
    return worker


def _groups(client: object) -> list[dict[str, object]]:
    try:
        return client.xinfo_groups("orders")  # type: ignore[attr-defined,no-any-return]
    except Exception:
        return []


@pytest.mark.parametrize("doc", QUICK_START_DOCS, ids=lambda p: p.name)
def test_the_quick_start_runs_as_pasted_and_its_task_runs(
    doc: Path, tmp_path: Path, bin_dir: Path, server: RedisServer
) -> None:
    server.client().flushall()
    project = tmp_path / "project"
    project.mkdir()
    env = clean_env(project, bin_dir)
    worker = run_quick_start(doc, project, env, server)
    try:
        entries = server.client().xrange("orders")
        assert len(entries) == 2, "the quick start adds one entry with redis-cli and one with produce()"
        for entry_id, _ in entries:
            line = f"order 42, amount 9.90, from entry {entry_id.decode()}"
            wait_for(lambda line=line: line in worker.output(), 30, f"the task's log line {line!r}")
        log = worker.output()
        assert "not registered" not in log
        assert re.search(r"INFO/\S+\] shop\.tasks\.handle_order\[[0-9a-f-]+\]: order 42", log), log
        # print() in a task comes out as WARNING lines of the pool process; the task logger logs at INFO
        assert not re.search(r"WARNING/(ForkPoolWorker|MainProcess)[^\]]*\] (order|\{)", log), log
        assert "exactly-once" in log  # the start-up line says which guarantee the stream gets
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
    assert server.client().xpending("orders", "celery")["pending"] == 0


def runnable_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc) if b.not_run is None and not in_quick_start(b)]


def _write_quick_start_app(project: Path, server: RedisServer) -> None:
    """The README quick start's `shop` package, which the other snippets import."""
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    for block in blocks(ROOT / "README.md"):
        if in_quick_start(block) and block.caption:
            (project / block.caption).write_text(replaced(block.text, server))


SETTINGS_CHECK = """
import sys
from types import SimpleNamespace

from celery import Celery

from celery_redis_stream.config import load_config

app = Celery("docs", broker=sys.argv[1])
namespace = {"app": app}
exec(compile(sys.stdin.read(), sys.argv[2], "exec"), namespace)
django = {name: value for name, value in namespace.items() if name.startswith("CELERY_")}
if django:  # a Django settings module
    app.config_from_object(SimpleNamespace(**django), namespace="CELERY")
app.conf.update({name: value for name, value in namespace.items() if name.startswith("stream_")})  # a celeryconfig
if not app.conf.get("stream_tasks"):  # a snippet of one setting: with the quick start's mapping
    app.conf.stream_tasks = {"orders": "shop.tasks.handle_order"}
config = load_config(app, check_registered=False)
assert config.streams, "the settings map no stream"
print(*sorted(s.stream for s in config.streams))
"""


def run_block(block: Block, project: Path, env: dict[str, str], server: RedisServer) -> str | None:
    """Runs one block; a pytest block is only written, and its file returned, to be run with the doc's others."""
    text = replaced(block.text, server)
    if block.caption:
        (project / block.caption).parent.mkdir(parents=True, exist_ok=True)
        (project / block.caption).write_text(text)
    if block.run == "settings":
        done = subprocess.run(
            [sys.executable, "-c", SETTINGS_CHECK, server.url_db(1), block.where], input=text, cwd=project, env=env,
            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 0, f"{block.where}: the settings do not load:\n{done.stderr}"
    elif block.run == "pytest":
        target = block.caption or f"test_snippet_{block.line}.py"
        if not block.caption:
            (project / target).write_text(text)
        return target
    elif block.lang == "python" and not block.caption:
        _run([sys.executable, "-c", text], project, env, block.where)
    elif not block.caption:
        raise AssertionError(f"{block.where}: a {block.lang or 'plain'} block is neither run nor marked not-run")
    return None


RUN_DOCS = sorted({b.path for b in runnable_blocks()})


@pytest.mark.parametrize("doc", RUN_DOCS, ids=lambda p: p.name)
def test_every_block_elsewhere_in_the_doc_runs(doc: Path, tmp_path: Path, bin_dir: Path, server: RedisServer) -> None:
    """Python, settings and pytest blocks of one doc, in order, in a fresh project with the quick start's app."""
    server.client().flushall()
    project = tmp_path / "project"
    project.mkdir()
    _write_quick_start_app(project, server)
    env = clean_env(project, bin_dir)
    tests = [run_block(block, project, env, server) for block in runnable_blocks() if block.path == doc]
    files = [name for name in tests if name is not None]
    if files:  # one pytest run for the doc's test files (and the conftest.py blocks beside them)
        done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], project, env, str(doc))
        assert f"{len(re.findall(r'^def test_', ''.join((project / f).read_text() for f in files), re.M))} passed" in (
            done.stdout
        ), done.stdout


def test_the_docs_keep_their_runnable_blocks() -> None:
    """Snippets cannot all turn into not-run markers unnoticed."""
    kinds = [b.run or ("file" if b.caption else b.lang) for b in runnable_blocks()]
    assert len(kinds) >= 12 and kinds.count("settings") >= 5 and kinds.count("pytest") >= 2, kinds
    quick = [b for doc in QUICK_START_DOCS for b in blocks(doc) if in_quick_start(b) and b.not_run is None]
    assert len(quick) == 6, [b.where for b in quick]
    assert "<!-- include: README.md#quick-start -->" in (ROOT / "docs" / "getting-started.md").read_text()


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    unmarked, bad_markers = [], []
    for doc in DOCS:
        for block in blocks(doc):
            if block.not_run is not None:
                if len(block.not_run.split()) < 2:
                    bad_markers.append(f"{block.where}: not-run needs a reason, got {block.not_run!r}")
            elif block.run is not None and block.run not in RUN_KINDS:
                bad_markers.append(f"{block.where}: unknown run kind {block.run!r}")
            elif not in_quick_start(block) and not (block.lang == "python" or block.caption or block.run):
                unmarked.append(f"{block.where} ({block.lang or 'no language'})")
    assert not bad_markers, "\n".join(bad_markers)
    assert not unmarked, "blocks neither run nor marked <!-- not-run: reason -->:\n" + "\n".join(unmarked)


def test_the_parser_sees_markers_captions_and_sections(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "## One\n\n`shop/x.py`:\n\n<!-- run: pytest -->\n```python\nx = 1\n```\n\n"
        "## Two\n\n<!-- not-run: sample output -->\n```text\nhello\n```\n\n- item\n\n  ```sh\n  echo hi\n  ```\n"
    )
    found = blocks(doc)
    assert [(b.section, b.lang, b.caption, b.run, b.not_run, b.text) for b in found] == [
        ("One", "python", "shop/x.py", "pytest", None, "x = 1\n"),
        ("Two", "text", None, None, "sample output", "hello\n"),
        ("Two", "sh", None, None, None, "echo hi\n"),
    ]
    assert shutil.which("bash")


def test_the_readme_is_a_landing_page_whose_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    installs = [line for line in readme.splitlines() if line.startswith("pip install")]
    assert installs and not [line for line in installs if re.search(r"\[[^]]*\b(test|lint|docs)\b", line)]
    for shown in ("Redis 7.0 and 8.6", "Valkey 8 and 9", "3.10 and 3.13", "celery 5.3.0", "kombu 5.3.0",
                  "redis-py 5.0.0", "prefork, solo, threads, gevent", "make demo", "make test"):  # fmt: skip
        assert shown in readme, shown
    for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", readme):
        assert (ROOT / target).exists(), target


def test_pip_show_gives_the_license_and_the_project_urls() -> None:
    from importlib.metadata import metadata

    meta = metadata("celery-redis-stream")
    assert meta["License"] == "MIT"
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
