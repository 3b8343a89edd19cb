"""Settings are read once, checked, and refused with a message naming the setting and the stream."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_redis_stream import StreamConfigError, StreamError
from celery_redis_stream import config as config_module
from celery_redis_stream.config import OPTIONS, STREAM_OPTIONS, Option, load_config

from .. import support

ROOT = Path(__file__).resolve().parents[2]


def make_app(**conf: Any) -> Celery:
    return support.make_app("cfg", broker="redis://:secret@127.0.0.1:1/3", **conf)


def test_a_task_name_maps_a_stream_with_the_documented_defaults() -> None:
    config = load_config(make_app(stream_tasks={"orders": "shop.handle"}))
    (sc,) = config.streams
    assert (sc.stream, sc.task, sc.mode, sc.group, sc.start, sc.batch_size) == (
        "orders", "shop.handle", "group", "celery", "$", 100,
    )  # fmt: skip
    assert sc.call == "fields"
    assert sc.tracker_key == "stream_tracker:{orders}"
    assert sc.dead_letter == "orders:dead"
    assert config.block_ms == 1000 and config.claim_idle_ms == 60000
    assert config.max_entry_bytes == 1048576


def test_stream_url_defaults_to_a_redis_broker_and_never_shows_its_password() -> None:
    config = load_config(make_app(stream_tasks={"orders": "shop.handle"}))
    assert config.url == "redis://:secret@127.0.0.1:1/3"
    assert "secret" not in config.safe_url
    assert "secret" not in repr(config)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hu/nter2@127.0.0.1:1/0",
        "redis://user:hu?nter2@h:1/0",
        "sentinel://:a@h1:1;sentinel://:hu#nter2@h2:2?master_name=m",
    ],
)
def test_a_password_with_an_unencoded_slash_question_mark_or_hash_is_refused_without_showing_it(url: str) -> None:
    # redis-py would take the password's head for the host or port and echo it in its error
    with pytest.raises(StreamConfigError, match="percent-encode it") as info:
        load_config(make_app(stream_tasks={"orders": "shop.handle"}, stream_url=url))
    assert info.value.setting == "stream_url"
    assert "hu" not in str(info.value) and "nter2" not in str(info.value)
    encoded = url.replace("hu/", "hu%2F").replace("hu?", "hu%3F").replace("hu#", "hu%23")
    assert load_config(make_app(stream_tasks={"orders": "shop.handle"}, stream_url=encoded)).url == encoded


def test_stream_url_follows_a_broker_given_by_the_celery_broker_url_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:pw@envhost:1234/3")
    app = make_app(stream_tasks={"orders": "shop.handle"})
    assert load_config(app).url == "redis://:pw@envhost:1234/3"


def test_stream_url_falls_back_to_local_redis_for_an_amqp_broker() -> None:
    app = make_app(stream_tasks={"orders": "shop.handle"})
    app.conf.broker_url = "amqp://guest:guest@localhost//"
    assert load_config(app).url == "redis://localhost:6379/0"


def test_per_stream_options_override_the_global_settings() -> None:
    app = make_app(
        stream_tasks={
            "payments": {
                "task": "shop.handle",
                "queue": "billing",
                "options": {"priority": 5},
                "call": "kwargs",
                "mode": "tracker",
                "group": "g2",
                "start": "0",
                "tracker": "pay",
                "batch_size": 7,
            }
        },
        stream_mode="group",
        stream_tracker_prefix="t:",
    )
    (sc,) = load_config(app).streams
    assert (sc.queue, dict(sc.options), sc.call, sc.mode, sc.group, sc.start, sc.batch_size) == (
        "billing", {"priority": 5}, "kwargs", "tracker", "g2", "0", 7,
    )  # fmt: skip
    assert sc.tracker_key == "t:pay"


def test_a_queue_in_send_options_is_the_stream_queue() -> None:
    app = make_app(stream_tasks={"o": {"task": "shop.handle", "options": {"queue": "q2", "priority": 5}}})
    (sc,) = load_config(app).streams
    assert (sc.queue, dict(sc.options)) == ("q2", {"priority": 5})
    app.conf.stream_tasks = {"o": {"task": "shop.handle", "queue": "q1", "options": {"queue": "q2"}}}
    with pytest.raises(StreamConfigError, match="twice"):
        load_config(app)


def test_a_converter_is_imported_at_start_up() -> None:
    app = make_app(stream_tasks={"o": {"task": "shop.handle", "converter": "tests.workerapp:to_order"}})
    (sc,) = load_config(app).streams
    assert sc.converter is not None and sc.converter.__name__ == "to_order"


def test_the_user_mapping_is_not_mutated() -> None:
    tasks = {"orders": {"task": "shop.handle"}}
    load_config(make_app(stream_tasks=tasks))
    assert tasks == {"orders": {"task": "shop.handle"}}


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"stream_tasks": {"orders": {"task": "shop.handle", "qeue": "x"}}}, ["stream_tasks", "orders", "qeue"]),
        ({"stream_tasks": {"orders": {"queue": "x"}}}, ["stream_tasks", "orders", "task"]),
        ({"stream_tasks": {"orders": ""}}, ["stream_tasks", "orders"]),
        ({"stream_tasks": {"orders": "   "}}, ["stream_tasks", "orders", "empty"]),
        ({"stream_tasks": {"orders": 5}}, ["stream_tasks", "orders"]),
        ({"stream_tasks": ["orders"]}, ["stream_tasks"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "call": "args"}}}, ["call", "orders"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "converter": "no.such:fn"}}}, ["converter", "orders"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "converter": "nocolon"}}}, ["converter", "orders"]),
        ({"stream_tasks": {"orders": "shop.unknown"}}, ["stream_tasks", "orders", "shop.unknown", "registered"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "mode": "x"}}}, ["mode", "orders"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "batch_size": 0}}}, ["batch_size", "orders"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "start": "yesterday"}}}, ["start", "orders"]),
        # ids Redis refuses: every read would fail, so the worker must not start
        ({"stream_tasks": {"orders": {"task": "shop.handle", "start": "18446744073709551616-0"}}}, ["start", "orders"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "start": "1-"}}}, ["start", "orders"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_start": "\u00b2-0"}, ["stream_start"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "options": {"task_id": "x"}}}}, ["options", "task_id"]),
        ({"stream_tasks": {"orders": {"task": "shop.handle", "registered": "no"}}}, ["registered", "orders"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_mode": "fanout"}, ["stream_mode"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_batch_size": "10"}, ["stream_batch_size"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_block_ms": 0}, ["stream_block_ms"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_claim_idle_ms": True}, ["stream_claim_idle_ms"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_dead_letter": "dead"}, ["stream_dead_letter"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_max_entry_bytes": -1}, ["stream_max_entry_bytes"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_max_queue_length": -1}, ["stream_max_queue_length"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_url": "amqp://x:pw@h//"}, ["stream_url"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_start": "-"}, ["stream_start"]),
        ({"stream_tasks": {"o": "shop.handle"}, "stream_group": ""}, ["stream_group"]),
    ],
)
def test_invalid_settings_are_refused_naming_setting_and_stream(conf: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(StreamConfigError) as info:
        load_config(make_app(**conf))
    message = str(info.value)
    for word in words:
        assert word in message
    assert "pw" not in message
    assert isinstance(info.value, ImproperlyConfigured) and isinstance(info.value, StreamError)


def test_a_queue_named_like_a_stream_in_the_broker_database_is_refused() -> None:
    app = make_app(stream_tasks={"payments": {"task": "shop.handle", "queue": "payments"}})
    app.conf.broker_url = app.conf.stream_url = "redis://127.0.0.1:1/0"
    with pytest.raises(StreamConfigError, match=r"payments.*same Redis database"):
        load_config(app)
    app.conf.stream_url = "redis://127.0.0.1:1/1"  # streams in another database: fine
    assert load_config(app).streams[0].queue == "payments"


def test_an_error_in_a_global_setting_names_the_streams_it_affects() -> None:
    with pytest.raises(StreamConfigError, match=r"stream_mode.*affects streams 'a', 'b'"):
        load_config(make_app(stream_tasks={"a": "shop.handle", "b": "shop.handle"}, stream_mode="fanout"))


def test_a_misspelt_setting_is_refused_rather_than_ignored(tmp_path: Any, monkeypatch: Any) -> None:
    with pytest.raises(StreamConfigError, match=r"stream_batchsize.*not a celery-redis-stream setting"):
        load_config(make_app(stream_tasks={"o": "shop.handle"}, stream_batchsize=5))
    (tmp_path / "djmisspelt.py").write_text(
        "CELERY_STREAM_TASKS = {'o': 'shop.handle'}\nCELERY_STREAM_BATCHSIZE = 9\nSTREAM_CHUNKS = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app()
    app.config_from_object("djmisspelt", namespace="CELERY")
    with pytest.raises(StreamConfigError, match="CELERY_STREAM_BATCHSIZE"):
        load_config(app)
    # the project's own STREAM_* settings are not ours
    (tmp_path / "djown.py").write_text("CELERY_STREAM_TASKS = {'o': 'shop.handle'}\nSTREAM_CHUNKS = 3\n")
    app = make_app()
    app.config_from_object("djown", namespace="CELERY")
    assert load_config(app).streams[0].stream == "o"


def test_an_unregistered_task_is_allowed_when_the_stream_says_so() -> None:
    app = make_app(stream_tasks={"orders": {"task": "elsewhere.task", "registered": False}})
    assert load_config(app).streams[0].task == "elsewhere.task"


def test_only_keeps_the_named_streams_and_refuses_unmapped_names() -> None:
    app = make_app(stream_tasks={"a": "shop.handle", "b": "shop.handle"})
    assert [s.stream for s in load_config(app, only=("b",)).streams] == ["b"]
    with pytest.raises(StreamConfigError, match=r"--redis-streams.*zzz"):
        load_config(app, only=("zzz",))


def test_django_style_namespaced_settings_are_read(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "djsettings.py").write_text(
        "CELERY_STREAM_TASKS = {'orders': 'shop.handle'}\nCELERY_STREAM_BATCH_SIZE = 9\n"
        "CELERY_STREAM_URL = 'redis://127.0.0.1:1/5'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app()
    app.config_from_object("djsettings", namespace="CELERY")
    config = load_config(app)
    assert config.url == "redis://127.0.0.1:1/5"
    assert config.streams[0].batch_size == 9


def test_max_deliveries_and_failed_task_dead_letters_default_globally_and_per_stream() -> None:
    config = load_config(make_app(stream_tasks={"orders": "shop.handle"}))
    assert (config.streams[0].max_deliveries, config.streams[0].dead_letter_failed_tasks) == (5, False)
    app = make_app(
        stream_max_deliveries=None,
        stream_dead_letter_failed_tasks=True,
        stream_tasks={
            "orders": "shop.handle",
            "payments": {"task": "shop.handle", "max_deliveries": 2, "dead_letter_failed_tasks": False},
        },
    )
    orders, payments = load_config(app).streams
    assert (orders.max_deliveries, orders.dead_letter_failed_tasks) == (None, True)  # None: never give up
    assert (payments.max_deliveries, payments.dead_letter_failed_tasks) == (2, False)
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "max_deliveries": None}}, stream_max_deliveries=3)
    assert load_config(app).streams[0].max_deliveries is None


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"stream_max_deliveries": 0}, ["stream_max_deliveries", "at least 1"]),
        ({"stream_max_deliveries": "5"}, ["stream_max_deliveries", "integer"]),
        ({"stream_max_deliveries": True}, ["stream_max_deliveries", "integer"]),
        ({"stream_dead_letter_failed_tasks": "yes"}, ["stream_dead_letter_failed_tasks", "True or False"]),
        (
            {"stream_tasks": {"orders": {"task": "shop.handle", "max_deliveries": -1}}},
            ["'max_deliveries'", "'orders'", "at least 1"],
        ),
        (
            {"stream_tasks": {"orders": {"task": "shop.handle", "dead_letter_failed_tasks": 1}}},
            ["'dead_letter_failed_tasks'", "'orders'", "True or False"],
        ),
    ],
)
def test_invalid_poison_and_failed_task_settings_are_refused(conf: dict[str, Any], words: list[str]) -> None:
    app = make_app(**{"stream_tasks": {"orders": "shop.handle"}, **conf})
    with pytest.raises(StreamConfigError) as info:
        load_config(app)
    for word in words:
        assert word in str(info.value)


def test_django_style_max_deliveries_none_is_read_as_never(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "djpoison.py").write_text(
        "CELERY_STREAM_TASKS = {'orders': 'shop.handle'}\nCELERY_STREAM_MAX_DELIVERIES = None\n"
        "CELERY_STREAM_DEAD_LETTER_FAILED_TASKS = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app()
    app.config_from_object("djpoison", namespace="CELERY")
    (sc,) = load_config(app).streams
    assert (sc.max_deliveries, sc.dead_letter_failed_tasks) == (None, True)


def test_a_config_error_carries_setting_stream_and_problem_apart_from_its_message() -> None:
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "batch_size": 0}})
    with pytest.raises(StreamConfigError) as info:
        load_config(app)
    error = info.value
    assert (error.setting, error.stream, error.problem) == (
        "stream_tasks 'batch_size'",
        "orders",
        "must be at least 1, got 0",
    )
    assert error.affects == ()
    assert (
        str(error)
        == "celery-redis-stream: setting stream_tasks 'batch_size' for stream 'orders': must be at least 1, got 0"
    )


def test_a_global_config_error_lists_the_streams_it_affects_as_an_attribute() -> None:
    app = make_app(stream_tasks={"a": "shop.handle", "b": "shop.handle"}, stream_block_ms=0)
    with pytest.raises(StreamConfigError) as info:
        load_config(app)
    error = info.value
    assert (error.setting, error.stream, error.problem) == ("stream_block_ms", None, "must be at least 1, got 0")
    assert error.affects == ("a", "b")
    assert str(error) == (
        "celery-redis-stream: setting stream_block_ms: must be at least 1, got 0 (affects streams 'a', 'b')"
    )


def test_a_config_error_from_a_message_alone_keeps_it() -> None:
    error = StreamConfigError("celery-redis-stream: something else")
    assert (str(error), error.setting, error.stream, error.problem) == (
        "celery-redis-stream: something else", None, None, "celery-redis-stream: something else",
    )  # fmt: skip


def reference_hook() -> Any:
    """docs/hooks/reference.py, the MkDocs hook that generates the settings reference from OPTIONS."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_table(markdown: str) -> dict[str, tuple[str, str, str]]:
    """The generated settings table: name -> (type, default, meaning), as the cells read."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in markdown.splitlines()[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        name = re.sub(r"<span[^>]*></span>", "", cells[0]).strip("`")
        assert name not in rows, f"{name} is listed twice"
        rows[name] = (cells[1].strip("`").replace("\\|", "|"), cells[2], cells[3])
    return rows


@pytest.mark.parametrize(("marker", "table"), [("settings", OPTIONS), ("stream-options", STREAM_OPTIONS)])
def test_the_settings_reference_is_generated_from_the_options_with_their_types_defaults_and_meanings(
    marker: str, table: dict[str, Option]
) -> None:
    hook = reference_hook()
    page = (ROOT / "docs" / "settings.md").read_text()
    assert f"<!-- generated: {marker} -->" in page
    rows = generated_table(hook.expand(f"<!-- generated: {marker} -->"))
    assert list(rows) == list(table)
    for name, option in table.items():
        kind, default, meaning = rows[name]
        assert kind == option.type, name
        assert meaning and meaning == option.meaning.replace("|", "\\|"), name
        if option.doc is not None:
            assert default == option.doc.replace("|", "\\|"), name
        elif option.inherits is not None:
            assert default == f"[`{option.inherits}`](#{option.inherits})", name
        else:
            assert default == f"`{hook._shown(option.default)}`", name


def test_the_cli_reference_is_generated_from_the_click_commands() -> None:
    import click

    from celery_redis_stream.cli import redis_stream

    page = reference_hook().expand("<!-- generated: cli -->")
    for name, command in redis_stream.commands.items():
        assert f"### `celery -A proj redis-stream {name}`" in page
        for param in command.params:
            shown = [param.human_readable_name] if isinstance(param, click.Argument) else param.opts
            assert any(f"`{opt}`" in page for opt in shown), (name, param.name)
    assert "`--without-redis-stream`" in page and "`--redis-streams`" in page


def test_every_option_default_passes_its_own_check() -> None:
    for name, option in OPTIONS.items():
        if option.default is not None:
            option.check(option.default, name, None)
    for key, option in STREAM_OPTIONS.items():
        if option.inherits is not None:
            assert option.inherits in OPTIONS, key
            assert OPTIONS[option.inherits].nullable == option.nullable, key
        elif option.default is not None:
            option.check(option.default, f"stream_tasks {key!r}", "orders")


def mccabe(statements: list[ast.stmt]) -> int:
    """Decision points as ruff's C901 counts them (McCabe: boolean operators and comprehensions do not count)."""
    n = 0
    for s in statements:
        if isinstance(s, (ast.If, ast.For, ast.AsyncFor, ast.While)):
            n += 1 + mccabe(s.body) + mccabe(s.orelse)
        elif isinstance(s, (ast.With, ast.AsyncWith, ast.ClassDef)):
            n += mccabe(s.body)
        elif isinstance(s, ast.Try):
            n += mccabe(s.body) + bool(s.orelse) + mccabe(s.orelse) + mccabe(s.finalbody)
            n += sum(1 + mccabe(handler.body) for handler in s.handlers)
        elif isinstance(s, ast.Match):
            last = s.cases[-1]
            irrefutable = last.guard is None and isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None
            n += sum(1 + mccabe(case.body) for case in s.cases) - irrefutable
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n += 1 + mccabe(s.body)
    return n


def functions(source: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(source)
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_settings_code_is_small_functions() -> None:
    # The counter itself, on a known case: 1 + for + if + elif + one except handler.
    sample = "def f(x):\n for y in x:\n  if y: pass\n  elif x: pass\n  else: pass\n try: pass\n except E: pass\n"
    assert [mccabe(f.body) + 1 for f in functions(sample)] == [5]
    source = Path(config_module.__file__).read_text()
    sizes = {f.name: (mccabe(f.body) + 1, (f.end_lineno or f.lineno) - f.lineno + 1) for f in functions(source)}
    assert "_load_config" in sizes
    too_big = {name: size for name, size in sizes.items() if size[0] > 10 or size[1] > 60}
    assert too_big == {}, "config.py: (McCabe complexity, lines) above 10 or 60"
