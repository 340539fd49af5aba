"""Smoke runs of the benches, a few seconds each, against real servers.

They check what the benches report (counts that match the database, files written, the
exit code agreeing with the verdict), never how fast anything was.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from bench import inserts, memory
from bench.ceiling import measure
from bench.common import WEBHOOK_PATH, link_senders, wait_pipeline_idle
from enrich.app import create_app
from enrich.server import serve_app
from enrich.testing.fake_twilio import open_fake_twilio
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT_SID = "AC" + "5e" * 16
TOKEN = "bench-smoke-token-0123456789abcdef"
ADMIN = "bench-smoke-admin-0123456789abcdef"
PUBLIC = "http://testserver.local"


async def _load_test(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "bench.load_test", "--quiet", *args],
        env={**os.environ, **env}, cwd=ROOT, capture_stdout=True, capture_stderr=True,
        check=False)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def _statuses(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM inbound_messages GROUP BY status").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


@pytest.mark.slow
async def test_load_test_counts_rate_limits_apart_and_matches_the_database(
        tmp_path: Path, database_url: str, redis_url: str, nursery: trio.Nursery) -> None:
    async with open_fake_twilio(ACCOUNT_SID, TOKEN) as fake:
        cdn = httpx.URL(fake.cdn_url)
        settings = make_settings(
            tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url,
            TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=TOKEN,
            TWILIO_API_BASE_URL=fake.api_url, MEDIA_REDIRECT_HOSTS=f"{cdn.host}:{cdn.port}",
            RATE_LIMIT_MESSAGES_PER_HOUR="2", ADMIN_TOKEN=ADMIN)
        assert await link_senders(database_url, 3) == 3
        stop = trio.Event()
        binds = await nursery.start(lambda task_status: serve_app(
            create_app(settings), settings, host="127.0.0.1", port=0,
            shutdown_trigger=stop.wait, task_status=task_status))
        env = {"LOAD_TEST_URL": binds[0] + WEBHOOK_PATH,
               # The server checks signatures against PUBLIC_URL, not the socket address.
               "LOAD_TEST_SIGN_URL": PUBLIC + WEBHOOK_PATH,
               "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
               "LOAD_TEST_SENDERS": "3", "LOAD_TEST_DUPLICATE_SHARE": "0",
               "LOAD_TEST_MEDIA_URL": fake.api_url, "LOAD_TEST_ADMIN_TOKEN": ADMIN,
               "LOAD_TEST_DATABASE_URL": database_url, "LOAD_TEST_WORKERS": "1"}
        code, output = await _load_test(env, "--rate", "30", "--duration", "1.5",
                                        "--out", str(tmp_path), "--name", "smoke")
        stop.set()
    data: dict[str, Any] = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.png").stat().st_size > 10_000
    assert code == (0 if data["passed"] else 1), output
    totals = data["totals"]
    assert totals["total"] == 45  # 30/s for 1.5 s
    assert totals["failed"] == 0, data["errors"]
    assert totals["rate_limited"] > 0
    assert totals["successful"] + totals["rate_limited"] == 45
    assert data["outcomes"] == {"accepted": totals["successful"],
                                "rate_limited": totals["rate_limited"]}
    # Every answer agrees with what the server stored: a limited message is recorded as
    # rejected, an accepted one is kept for processing; 3 senders x 2 per hour at most.
    stored = _statuses(database_url)
    assert stored.pop("rejected") == totals["rate_limited"]
    assert sum(stored.values()) == totals["successful"] <= 6
    assert data["latency_ms"]["count"] == 45
    assert f"Rate Limited: {totals['rate_limited']}" in output
    assert "=== Performance Assessment ===" in output
    server = data["server"]
    assert server["cache"]["phoneNumberCache"]["hits"] + \
        server["cache"]["phoneNumberCache"]["misses"] > 0
    assert server["peak_pg_connections"] <= 5  # make_settings' DATABASE_POOL_MAX
    written = (tmp_path / "smoke.json").read_text()
    assert TOKEN not in written and ADMIN not in written and TOKEN not in output


async def test_wrong_signing_url_fails_every_request_and_exits_1(
        served: dict[str, Any], tmp_path: Path) -> None:
    url = served["url"] + WEBHOOK_PATH
    settings = served["settings"]
    env = {"LOAD_TEST_URL": url, "LOAD_TEST_SIGN_URL": url,  # not PUBLIC_URL: 403
           "TWILIO_AUTH_TOKEN": settings.twilio_auth_token, "LOAD_TEST_WORKERS": "1"}
    code, output = await _load_test(env, "--concurrent", "2", "--count", "6", "--duration",
                                    "20", "--out", str(tmp_path), "--name", "bad",
                                    "--no-plot")
    data = json.loads((tmp_path / "bad.json").read_text())
    assert code == 1, output
    assert data["totals"]["total"] == data["totals"]["failed"] == 6
    assert data["errors"] == {"http_403": 6}
    assert "✗ At most 0 failed requests: 6 failed" in output


def _twelve_messages(env: dict[str, str], out: Path, name: str) -> dict[str, Any]:
    """``bench.load_test`` against a bench server: 12 messages on 3 connections, no
    redeliveries; its JSON summary (every message answered successfully)."""
    import subprocess

    run = subprocess.run(
        [sys.executable, "-m", "bench.load_test", "--quiet", "--concurrent", "3",
         "--count", "12", "--out", str(out), "--name", name, "--no-plot"],
        env={**env, "LOAD_TEST_WORKERS": "1", "LOAD_TEST_DUPLICATE_SHARE": "0"},
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert data["totals"]["successful"] == 12, run.stdout + run.stderr
    data["_stdout"] = run.stdout
    return data


def test_ceiling_quick_mode() -> None:
    summary = measure(duration=1.0, concurrent=4, workers=1, progress=False)
    assert summary["totals"]["failed"] == 0
    assert summary["totals"]["successful"] == summary["totals"]["total"] > 0
    assert summary["outcomes"] == {"accepted": summary["totals"]["total"]}
    assert summary["server"]["rss_mb"]["max"] > 0


async def test_inserts_quick_mode_stores_the_same_rows_every_way(database_url: str) -> None:
    result = await inserts.run(database_url, messages=6, items=4, rounds=1)
    assert set(result["methods"]) == {"batch", "row_by_row", "row_by_row_tx"}
    assert result["rows_stored"] == 3 * (5 + 6) * 4  # warm-up + measured, 4 items each
    assert result["ratio_row_by_row_vs_batch"] > 0
    with psycopg.connect(database_url) as conn:
        open_left = conn.execute("SELECT count(*) FROM inbound_messages "
                                 "WHERE status <> 'done'").fetchone()
        shapes = conn.execute(
            "SELECT m.message_sid, array_agg(i.item_type || ':' || i.value "
            "ORDER BY i.item_index) FROM inbound_messages m JOIN enrichment_items i "
            "ON i.message_id = m.id GROUP BY m.message_sid").fetchall()
    assert open_left == (0,)
    assert len(shapes) == 33
    assert len({tuple(s[1]) for s in shapes}) == 1  # identical rows whichever way


async def test_memory_downloads_quick(tmp_path: Path) -> None:
    async with open_fake_twilio(memory.ACCOUNT_SID, memory.TOKEN) as fake:
        cdn = httpx.URL(fake.cdn_url)
        result = await memory.downloads(fake.api_url, f"{cdn.host}:{cdn.port}", count=4,
                                        size=256 * 1024, temp_dir=tmp_path)
    assert result["all_complete"] and result["failures"] == {}
    assert result["max_files_at_once"] == 4  # all held at once, as the bench intends
    assert result["temp_files_left"] == 0
    assert result["streamed"]["rss_peak_mb"] >= result["streamed"]["rss_before_mb"]


async def test_memory_downloads_count_failures_instead_of_hanging(tmp_path: Path) -> None:
    async with open_fake_twilio(memory.ACCOUNT_SID, "a-different-token") as fake:
        cdn = httpx.URL(fake.cdn_url)
        with trio.fail_after(60):  # hang guard: failed downloads must still release the rest
            result = await memory.downloads(fake.api_url, f"{cdn.host}:{cdn.port}", count=3,
                                            size=64 * 1024, temp_dir=tmp_path, warm_up=False)
    assert result["failures"] == {"MediaUnavailable": 3}  # 401: wrong credentials
    assert not result["all_complete"]
    assert result["temp_files_left"] == 0


@pytest.mark.slow
def test_bench_server_end_to_end_with_the_load_test(tmp_path: Path) -> None:
    """bench.serve's stack: embedded servers, linked senders, fake Twilio, `enrich serve`;
    every message is accepted, processed and confirmed."""
    from bench.serve import BenchServer, ServeOptions

    with BenchServer(ServeOptions(senders=5)) as server:
        _twelve_messages({**os.environ, **server.load_env()}, tmp_path, "stack")
        wait_pipeline_idle(server.database_url, timeout=60)
        assert _statuses(server.database_url) == {"done": 12}
        sent = httpx.get(server.fake["api_url"] + "/_fake/messages").json()
        assert len(sent) == 12


@pytest.mark.slow
def test_e2e_quick_run_processes_everything_and_reports_the_judged_ratio() -> None:
    """bench.e2e on the real stack, small: every message processed and confirmed, the
    mix sent counted, and the verdict taken from the stricter whole-run / speech-stage
    ratio (the steady window is reported, not judged)."""
    from bench.e2e import E2EOptions, format_result, run

    result = run(E2EOptions(messages=60, rate=60.0, senders=5, media_latency=0.01,
                            speech_latency=0.05, send_latency=0.01, timeout=120))
    db = result["database"]
    assert db["statuses"] == {"done": 60} and db["replies"] == {"confirmation": 60}
    assert db["mix"]["voice"] == db["voice_notes"]["count"] > 0
    assert 0 < db["mix"]["voice"] + db["mix"]["image"] < 60
    # 60 messages at 60/s: the push rate, not a stage, bounds the whole run; with
    # downloads this short, Speech is the limiting stage whatever mix is drawn.
    assert result["littles_law_for_the_mix_sent"]["limiting_stage"] == "speech"
    assert result["littles_law_for_the_mix_sent"]["bound_per_s"] > 60
    assert 0 < result["overall_ratio"] <= 1.0
    assert result["speech_stage_ratio"] is not None
    assert "judged" in format_result(result)


@pytest.mark.slow
@pytest.mark.parametrize("webs", [1, 2])
def test_bench_server_split_deployment(tmp_path: Path, webs: int) -> None:
    """bench.serve --split: webhooks in --role web processes (``webs`` of them sharing the
    port), jobs in a niced --role worker process; the load test watches them all, the
    worker processes everything, and stopping the bench server stops every process."""
    import psutil

    from bench.serve import BenchServer, ServeOptions

    options = ServeOptions(senders=5, split=True, worker_nice=7, web_processes=webs)
    with BenchServer(options) as server:
        assert server.worker_pid is not None and server.worker_pid != server.pid
        web_procs = [psutil.Process(p.pid) for p in server.webs]
        worker = psutil.Process(server.worker_pid)
        assert len(web_procs) == webs and web_procs[0].pid == server.pid
        assert all(web.cmdline()[-1] == "web" for web in web_procs)
        assert worker.cmdline()[-1] == "worker"
        assert all(worker.nice() - web.nice() == 7 for web in web_procs)
        env = {**os.environ, **server.load_env()}
        assert env["LOAD_TEST_WORKER_PID"] == str(server.worker_pid)
        assert env["LOAD_TEST_SERVER_PID"] == ",".join(str(w.pid) for w in web_procs)
        data = _twelve_messages(env, tmp_path, "split")
        assert data["server"]["worker"]["pid"] == server.worker_pid
        assert data["server"]["worker"]["rss_mb"]["max"] > 0
        assert "Worker process (jobs" in data["_stdout"]
        wait_pipeline_idle(server.database_url, timeout=60)
        assert _statuses(server.database_url) == {"done": 12}
        # The worker ran every job; the web processes none.
        assert server.jobs_log.name == "worker.log"
        assert server.jobs_log.read_text().count('"job finished"') == 12
        for log in server.root.glob("server*.log"):
            assert '"job finished"' not in log.read_text()
        assert len(httpx.get(server.fake["api_url"] + "/_fake/messages").json()) == 12
    assert not any(p.is_running() for p in [*web_procs, worker])


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_bench_server_pins_the_web_process_to_a_cpu_of_its_own(tmp_path: Path) -> None:
    """bench.serve --pin: the web process (every thread) on the last CPU; the stores and
    the load generator on the others; the niced worker anywhere; the caller's own
    affinity is left as it was."""
    import psutil

    from bench.serve import BenchServer, ServeOptions
    from enrich.tuning import parse_cpu_list

    ours = os.sched_getaffinity(0)
    with BenchServer(ServeOptions(senders=5, split=True, pin=True)) as server:
        layout = server.layout
        assert layout is not None and layout.web == {max(ours)} and layout.rest == ours - layout.web
        assert os.sched_getaffinity(0) == ours
        web = psutil.Process(server.pid)
        assert {frozenset(os.sched_getaffinity(t.id)) for t in web.threads()} == {layout.web}
        assert set(psutil.Process(server.worker_pid).cpu_affinity()) == ours
        postmaster = int((server.root / "postgres" / "postmaster.pid").read_text().split()[0])
        assert set(psutil.Process(postmaster).cpu_affinity()) == layout.rest
        env = {**os.environ, **server.load_env()}
        assert parse_cpu_list(env["LOAD_TEST_CPU_AFFINITY"]) == layout.rest
        data = _twelve_messages(env, tmp_path, "pinned")
        assert data["config"]["cpu_affinity"] == env["LOAD_TEST_CPU_AFFINITY"]


def test_sweep_confirms_a_miss_before_it_counts() -> None:
    from bench.sweep import confirmed

    runs = iter([{"rate": 150.0, "ok": False, "p99_ms": 146.0},
                 {"rate": 150.0, "ok": True, "p99_ms": 9.0}])
    row = confirmed(lambda: next(runs))
    assert row["ok"] and row["p99_ms"] == 9.0 and row["retried"]["p99_ms"] == 146.0
    twice = iter([{"rate": 800.0, "ok": False, "p99_ms": 900.0},
                  {"rate": 800.0, "ok": False, "p99_ms": 950.0}])
    row = confirmed(lambda: next(twice))
    assert not row["ok"] and row["retried"]["p99_ms"] == 900.0
    calls = iter([{"rate": 100.0, "ok": True}])
    assert confirmed(lambda: next(calls)) == {"rate": 100.0, "ok": True}  # no second run


def test_sweep_reports_the_ceiling_beside_the_best_step_and_judges_strictly() -> None:
    from bench.suite import goals_table
    from bench.sweep import beside_ceiling, judged_fraction

    rows = [{"rate": 500.0, "ok": True, "ceiling_rps": 1000.0},
            {"rate": 600.0, "ok": False, "ceiling_rps": 1300.0},
            {"rate": 550.0, "ok": True, "ceiling_rps": 1050.0}]
    assert beside_ceiling(rows, 550.0) == {
        "beside_ceiling_rps": 1050.0, "fraction_of_beside_ceiling": 0.5238,
        "ceilings_rps": [1000.0, 1300.0, 1050.0]}
    assert beside_ceiling(rows, None) == {}
    assert beside_ceiling([{"rate": 550.0, "ok": True}], 550.0) == {}  # none measured

    def line(sweep: dict[str, object]) -> str:
        table = goals_table({"deployment": "split", "sweep": sweep})
        return next(row for row in table.splitlines() if "highest rate" in row)

    both = {"best_rate": 550.0, "fraction_of_ceiling": 0.51, **beside_ceiling(rows, 550.0)}
    assert judged_fraction(both) == 0.51
    assert line(both).endswith("✓ |") and "51.0%" in line(both) and "52.4%" in line(both)
    # A beside ceiling that reads lower never rescues a miss against the session's ...
    assert line({**both, "fraction_of_ceiling": 0.48}).endswith("✗ |")
    # ... and one that reads higher fails the step on its own.
    assert line({**both, "fraction_of_beside_ceiling": 0.45}).endswith("✗ |")
    assert line({"best_rate": 550.0, "fraction_of_ceiling": 0.48}).endswith("✗ |")
    assert line({"best_rate": 600.0, "fraction_of_ceiling": 0.55}).endswith("✓ |")
    assert judged_fraction({}) is None


def test_sweep_bisects_to_25_per_second_between_the_last_pass_and_the_miss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up the grid to the first miss, then three bisections: 800 passes and 1000 misses,
    so 900, 850 and 825 are tried and the best is found within 25/s."""
    import bench.sweep as sweep_module
    from bench.serve import ServeOptions

    tried: list[float] = []

    def fake_step(options: object, rate: float, *args: object) -> dict[str, object]:
        tried.append(rate)
        return {"rate": rate, "ok": rate <= 830}

    monkeypatch.setattr(sweep_module, "step", fake_step)
    grid = [100.0, 400.0, 600.0, 800.0, 1000.0]
    result = sweep_module.sweep(ServeOptions(), grid, seconds=1, p99_ms=100)
    assert tried == [100.0, 400.0, 600.0, 800.0, 1000.0, 900, 850, 825]
    assert (result["best_rate"], result["first_miss"]) == (825, 850)


def test_every_run_of_a_step_measures_its_own_ceiling() -> None:
    from bench.sweep import confirmed, with_ceiling

    ceilings = iter([1000.0, 1200.0])
    runs = iter([{"rate": 850.0, "ok": False}, {"rate": 850.0, "ok": True}])
    row = confirmed(with_ceiling(lambda: next(runs), lambda: next(ceilings)))
    assert row["ok"] and row["ceiling_rps"] == 1200.0
    assert row["retried"]["ceiling_rps"] == 1000.0

    def broken() -> float:
        raise RuntimeError("ceiling server did not start")

    row = with_ceiling(lambda: {"rate": 100.0, "ok": True}, broken)()
    assert row == {"rate": 100.0, "ok": True}  # the step still ran, without a ceiling
    plain = {"rate": 100.0, "ok": True}
    assert with_ceiling(lambda: plain, None)() is plain
