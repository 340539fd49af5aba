"""Watch the server during a load run: its own statistics, its RSS, PostgreSQL's view.

Everything is optional and best effort (a failed sample is skipped, never fatal):

* with the admin token: ``POST /api/sms/performance/reset`` at the start (counters of
  this run only), ``GET /api/sms/performance/stats`` once a second (pool slots, queue,
  cache hit rate) and at the end;
* with the server's pid: its RSS once a second (psutil);
* with a database URL: connections the server holds (``pg_stat_activity`` rows with
  ``application_name`` ``enrich:<instance>``), once a second: the most any one process
  holds (each has its own DATABASE_POOL_MAX) and the total;
* with the worker's pid and origin (``bench.serve --split``: webhooks in one process, jobs
  in another): the worker's CPU and RSS, and its pipeline statistics (queue, jobs in
  flight, pools), reported apart under ``worker``.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx


class ServerMonitor:
    def __init__(self, url: str, admin_token: str | None, pid: int | None,
                 database_url: str | None, *, worker_pid: int | None = None,
                 worker_url: str | None = None, more_pids: tuple[int, ...] = ()) -> None:
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.token = admin_token
        self.pid = pid
        # Further web processes on the same port (WEB_REUSE_PORT): CPU and RSS are summed.
        self.more_pids = more_pids
        self.database_url = database_url
        self.worker_pid = worker_pid
        self.worker_origin = None
        if worker_url:
            wparts = urlsplit(worker_url)
            self.worker_origin = f"{wparts.scheme}://{wparts.netloc}"
        self.samples: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}
        self._http = httpx.Client(timeout=2.0, trust_env=False)
        self._procs: list[Any] = []
        self._worker_proc: Any = None
        self._pg: Any = None

    def _note(self, what: str, exc: BaseException) -> None:
        key = f"{what}: {type(exc).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def _admin(self, method: str, path: str, origin: str | None = None
               ) -> dict[str, Any] | None:
        if not self.token:
            return None
        try:
            response = self._http.request(
                method, (origin or self.origin) + "/api/sms/performance/" + path,
                headers={"Authorization": f"Bearer {self.token}"})
            response.raise_for_status()
            data = response.json().get("data")
            return data if isinstance(data, dict) else None
        except (httpx.HTTPError, ValueError) as exc:
            self._note(path if origin is None else f"worker {path}", exc)
            return None

    def _process(self, pid: int, what: str) -> Any:
        import psutil

        try:
            proc = psutil.Process(pid)
            proc.cpu_percent()  # starts the interval the first sample reads
            return proc
        except psutil.Error as exc:
            self._note(what, exc)
            return None

    def begin(self) -> None:
        import psutil

        psutil.cpu_percent()  # starts the machine-wide interval
        self._admin("POST", "reset")
        if self.worker_origin:
            self._admin("POST", "reset", self.worker_origin)
        for i, pid in enumerate((self.pid, *self.more_pids) if self.pid else ()):
            proc = self._process(pid, "pid" if i == 0 else f"pid {pid}")
            if proc is not None:
                self._procs.append(proc)
        if self.worker_pid:
            self._worker_proc = self._process(self.worker_pid, "worker pid")
        if self.database_url:
            import psycopg

            try:
                self._pg = psycopg.connect(self.database_url, autocommit=True,
                                           application_name="enrich-bench")
            except psycopg.Error as exc:
                self._note("database", exc)

    def sample(self, t: float) -> dict[str, Any]:
        import psutil

        # Whole machine, all cores (100 = every core busy): who else wants the CPU.
        sample: dict[str, Any] = {"t": round(t, 2), "machine_cpu_pct": psutil.cpu_percent()}
        stats = self._admin("GET", "stats")
        if stats is not None:
            pools = stats.get("connectionPools", {})
            pipeline = stats.get("pipeline", {})
            sample["pools"] = pools
            sample["queueDepth"] = pipeline.get("queueDepth")
            sample["inFlight"] = pipeline.get("inFlight")
            sample["cacheHitRate"] = stats.get("cache", {}).get("metrics", {}).get("hitRate")
        if self.worker_origin:
            wstats = self._admin("GET", "stats", self.worker_origin)
            if wstats is not None:
                # The jobs run there: the queue and jobs in flight are the worker's.
                wpipeline = wstats.get("pipeline", {})
                sample["worker_pools"] = wstats.get("connectionPools", {})
                sample["queueDepth"] = wpipeline.get("queueDepth")
                sample["inFlight"] = wpipeline.get("inFlight")
        worker = [self._worker_proc] if self._worker_proc is not None else []
        for procs, prefix in ((self._procs, ""), (worker, "worker_")):
            if not procs:
                continue
            try:
                rss = sum(proc.memory_info().rss for proc in procs)
                cpu = sum(proc.cpu_percent() for proc in procs)
                sample[prefix + "rss_mb"] = round(rss / 2**20, 1)
                sample[prefix + "cpu_pct"] = round(cpu, 1)
            except Exception as exc:  # psutil.Error: the process went away
                self._note(prefix + "rss", exc)
        if self._pg is not None:
            try:
                # Per process (application_name enrich:<instance>): each process has its
                # own pool and DATABASE_POOL_MAX.
                row = self._pg.execute(
                    "SELECT coalesce(max(n), 0), coalesce(sum(n), 0) FROM (SELECT count(*) n"
                    " FROM pg_stat_activity WHERE application_name LIKE %s"
                    " GROUP BY application_name) per_process",
                    ("enrich:%",),
                ).fetchone()
                if row:
                    sample["pg_connections"] = int(row[0])
                    sample["pg_connections_all"] = int(row[1])
            except Exception as exc:  # psycopg.Error
                self._note("pg_stat_activity", exc)
        self.samples.append(sample)
        return sample

    @staticmethod
    def describe(sample: dict[str, Any]) -> str:
        parts = []
        pg = sample.get("pools", {}).get("postgres")
        if pg:
            parts.append(f"db {pg.get('inUse')}/{pg.get('total')} wait {pg.get('waiting')}")
        if sample.get("queueDepth") is not None:
            parts.append(f"queue {sample['queueDepth']} jobs {sample.get('inFlight')}")
        if "rss_mb" in sample:
            parts.append(f"rss {sample['rss_mb']:.0f} MB cpu {sample.get('cpu_pct', 0):.0f}%")
        if "worker_rss_mb" in sample:
            parts.append(f"worker rss {sample['worker_rss_mb']:.0f} MB cpu "
                         f"{sample.get('worker_cpu_pct', 0):.0f}%")
        return ("  | " + "  ".join(parts)) if parts else ""

    def finish(self, t: float) -> dict[str, Any]:
        """Everything observed: samples, final statistics, peaks."""
        final = self.sample(t)
        stats = self._admin("GET", "stats")
        result: dict[str, Any] = {"samples": self.samples, "monitor_errors": self.errors}
        if stats is not None:
            result["cache"] = stats.get("cache")
            result["pipeline"] = stats.get("pipeline")
            result["database"] = stats.get("database")
            result["alerts"] = stats.get("alerts")
        pg_totals = [s["pools"]["postgres"]["total"] for s in self.samples
                     if s.get("pools", {}).get("postgres")]
        if pg_totals:
            result["peak_pool_connections"] = max(pg_totals)
            result["db_pool_max"] = self.samples[-1]["pools"]["postgres"].get("max")
        pg_seen = [s["pg_connections"] for s in self.samples if s.get("pg_connections")]
        if pg_seen:
            result["peak_pg_connections"] = max(pg_seen)  # the most one process held
            result["peak_pg_connections_all"] = max(
                s.get("pg_connections_all", 0) for s in self.samples)
        result.update(self._process_figures(final, ""))
        if self.worker_pid or self.worker_origin:
            worker: dict[str, Any] = {"pid": self.worker_pid,
                                      **self._process_figures(final, "worker_")}
            if self.worker_origin:
                wstats = self._admin("GET", "stats", self.worker_origin)
                if wstats is not None:
                    worker["pipeline"] = wstats.get("pipeline")
                    worker["database"] = wstats.get("database")
                wpg = [s["worker_pools"]["postgres"]["total"] for s in self.samples
                       if s.get("worker_pools", {}).get("postgres")]
                if wpg:
                    worker["peak_pool_connections"] = max(wpg)
            result["worker"] = worker
        machine = [s["machine_cpu_pct"] for s in self.samples[:-1]]
        if machine:
            result["machine_cpu_pct"] = round(sum(machine) / len(machine), 1)
        return result

    def _process_figures(self, final: dict[str, Any], prefix: str) -> dict[str, Any]:
        """RSS (first, last, max) and CPU (avg, max; % of one core) of one process."""
        out: dict[str, Any] = {}
        rss = [s[prefix + "rss_mb"] for s in self.samples if prefix + "rss_mb" in s]
        if rss:
            out["rss_mb"] = {"first": rss[0], "last": final.get(prefix + "rss_mb", rss[-1]),
                             "max": max(rss)}
            cpu = [s[prefix + "cpu_pct"] for s in self.samples[:-1] if prefix + "cpu_pct" in s]
            if cpu:
                out["cpu_pct"] = {"avg": round(sum(cpu) / len(cpu), 1), "max": max(cpu)}
        return out

    def close(self) -> None:
        self._http.close()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
