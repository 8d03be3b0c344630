"""Local worker processes: a fork server started early, so workers start ready.

A spawned worker starts a new Python and imports pyarrow and etl (about
0.25 s, measured) after the main process has done the same: start-up cost twice,
one after the other. Instead, ``start_early`` (called by the CLI before its own
heavy imports) starts multiprocessing's fork server, which imports all that
(``etl._preload``) while the main process does; each worker is then a fork of
that single-threaded server, with nothing left to import. Where the platform has
no fork server, workers are spawned as before.
"""

from __future__ import annotations

import importlib.abc
import multiprocessing
import os
import sys
import threading

PRELOAD = "etl._preload"
SERVER_MARK = "ETL_FORK_SERVER"  # set in the fork server's environment only
# ... and this one too when the server may end with the process that starts it: Linux
# ties that to the starting thread, and only the main thread lasts as long as its process
DIES_MARK = "ETL_FORK_SERVER_DIES_WITH_PARENT"
# Environment defaults for our own processes, set before numpy and pyarrow load (the
# CLI's process and the fork server, hence the workers); a value the user set is kept.
# - One BLAS thread: numpy's OpenBLAS otherwise starts a thread per core that spins
#   idle after start-up (0.1 s of CPU per process, measured); ingest never calls BLAS.
# - Arrow on jemalloc (Linux: its wheels have it). With the default mimalloc, Arrow
#   hands freed pages back to the kernel after 10 ms and takes them again for the next
#   batch, which the kernel must zero anew: 1 to 11% of a shard's CPU (perf; it varies
#   with timing), against 0.3 to 0.4% with jemalloc, which also peaks 40-50 MB lower
#   per worker (170 vs 215 MB on 4 zst shards). Only the variable reaches the pools
#   Arrow's C++ uses itself (the Parquet writer's): pyarrow's set_memory_pool does not.
PROCESS_ENV = {"OPENBLAS_NUM_THREADS": "1",
               **({"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
                  if sys.platform.startswith("linux") else {})}
SERVER_ENV = {SERVER_MARK: "1", **PROCESS_ENV}  # the fork server's: etl._preload checks the mark


_server_failed = False  # the fork server would not start here: spawn from then on
_ready_here = False  # this process imported what workers need itself: it forks them


def default_scheduler(workers: int | None = None) -> str:
    """Processes for 2+ workers (parsing holds the GIL), else synchronous; ``workers``:
    the count asked for, else one per usable core."""
    return "processes" if (workers or usable_cores()) >= 2 else "synchronous"


def pool_size(asked: int | None, tasks: int) -> int:
    """Workers for ``tasks`` tasks: ``asked`` (else one per usable core), at most one a task."""
    return max(1, min(asked or usable_cores(), tasks))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's
    cpuset), capped by its cgroup's CPU quota (``docker run --cpus``, a Kubernetes CPU
    limit). ``os.cpu_count()`` counts the host's: a 2-CPU container on a 64-core host
    would start 64 workers, each with its batches, its Parquet writers and its zstd
    window, and run them in turns."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(n, quota) if quota else n)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> int | None:
    """CPUs this process's cgroups allow by quota, rounded up (the smallest along its
    cgroup and their parents, v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None without
    a quota, or where cgroups cannot be read."""
    limits = []
    for version, values in _cgroup_files(root, own, ("cpu.max",), "cpu",
                                         ("cpu.cfs_quota_us", "cpu.cfs_period_us")):
        try:  # v2: "max 100000" or "QUOTA PERIOD"
            quota = values[0][0]
            period = values[0][1] if version == 2 else values[1][0]
            if quota not in ("max", "-1"):
                limits.append(max(1, -(-int(quota) // int(period))))
        except (IndexError, ValueError, ZeroDivisionError):
            continue  # malformed: no limit from it
    return min(limits) if limits else None


def cgroup_memory_left(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's cgroups let it still take (limit less usage, the smallest
    along its cgroup and their parents, v2 ``memory.max`` or v1 ``memory.limit_in_bytes``);
    None without a limit, or where cgroups cannot be read."""
    left = []
    for _, values in _cgroup_files(root, own, ("memory.max", "memory.current"), "memory",
                                   ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        try:
            limit, used = values[0][0], int(values[1][0])
            if limit != "max" and int(limit) < 1 << 60:  # v1's "no limit" is a huge number
                left.append(max(0, int(limit) - used))
        except (IndexError, ValueError):
            continue
    return min(left) if left else None


def memory_available(meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes this process may still take: the kernel's MemAvailable, capped by its
    cgroup's limit less usage (a container's memory limit); None where neither is known."""
    known = [cgroup_memory_left()]
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    known = [k for k in known if k is not None]
    return min(known) if known else None


def _cgroup_files(root: str, own: str, v2_names: tuple[str, ...], v1_controller: str,
                  v1_names: tuple[str, ...]):
    """(version, each named file's words) for every folder along this process's cgroups
    and their parents that holds all the named files (v2: the unified hierarchy at
    ``root`` or, on hybrid systems, ``root/unified``; v1: the controller's). Unreadable
    or malformed files are passed over."""
    try:
        with open(own) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            _, controllers, path = line.split(":", 2)
        except ValueError:
            continue
        if controllers == "":
            version, names = 2, v2_names
            folders = [root, os.path.join(root, "unified")]
        elif v1_controller in controllers.split(","):
            version, names = 1, v1_names
            folders = [os.path.join(root, c) for c in (v1_controller, controllers)]
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for folder in dict.fromkeys(folders):
            for i in range(len(parts), -1, -1):
                at = os.path.join(folder, *parts[:i])
                try:
                    values = []
                    for name in names:
                        with open(os.path.join(at, name)) as fh:
                            values.append(fh.read().split())
                except OSError:
                    continue
                yield version, values


def context() -> str:
    """The start method for local worker processes: fork, from a process that made itself
    ready for it (``start_early(here=True)``) and runs no other thread; else the fork
    server; else spawn."""
    if _ready_here and threading.active_count() == 1:
        return "fork"
    usable = "forkserver" in multiprocessing.get_all_start_methods() and not _server_failed
    return "forkserver" if usable else "spawn"


def start_early(here: bool = False) -> None:
    """Get the workers' start under way now: start the fork server in the background (a
    no-op when it runs already, or when this process is ready to fork them itself).

    ``here`` (the CLI: a process of its own, no thread yet): on Linux, this process
    imports what the workers need itself (``etl._preload``, numpy refused as in the
    server) and forks them when the pool starts: no second Python and no second import
    on the way to the first task (4 long-window zst shards, interleaved 6x: 1.27-1.44 s
    against 1.36-1.52 s). Never for a library caller: a notebook runs threads, and this
    process's pyarrow then works without numpy for good (ingest and the loaders use none).

    Never fails the run: where the server cannot start (no Unix sockets, say),
    ``context`` says spawn from then on, as before fork servers.
    """
    global _server_failed, _ready_here
    if here and not _ready_here and sys.platform.startswith("linux") \
            and "fork" in multiprocessing.get_all_start_methods() \
            and threading.active_count() == 1:
        for k, v in PROCESS_ENV.items():  # before numpy and pyarrow load
            os.environ.setdefault(k, v)
        sys.meta_path.insert(0, NO_NUMPY)
        try:
            importlib.import_module(PRELOAD)
        finally:
            sys.meta_path.remove(NO_NUMPY)
        _ready_here = True
        return
    if context() != "forkserver":
        return
    from multiprocessing import forkserver

    env = {**SERVER_ENV, **({DIES_MARK: "1"} if threading.current_thread()
                            is threading.main_thread() else {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items()
                       if k in (SERVER_MARK, DIES_MARK) or not saved[k]})
    try:  # the server inherits the environment as it is now
        multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD])
        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - any failure here means: spawn instead
        _server_failed = True
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def run_local(fn, items: list, arg, lost=None, started=None, workers: int | None = None) -> list:
    """``fn(item, arg)`` for every item, on local worker processes; results in item order.

    One task per hand-out, in the order given, on up to ``workers`` processes (default:
    one per usable core), never more than there are items. A plain
    process pool (what dask's own multiprocessing scheduler runs on, too), so neither
    this process nor the workers import dask for a flat map of independent tasks.
    When a worker process dies (killed, out of memory), the pool is broken: every task
    not finished by then gets ``lost(item, why)`` as its result (without ``lost``, the
    error is raised). On an interrupt, tasks not started are cancelled; running ones
    end with it. ``started()`` (if given) is called once the workers are started: a
    thread of the caller's (a progress bar) must wait until then, so that they can be
    forked from a process that runs no other thread.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    start_early()  # started already, or this process forks them; else here, or spawn
    n = pool_size(workers, len(items))
    ctx = multiprocessing.get_context(context())
    unfinished = ctx.Value("i", len(items))  # a_core_waits in the workers reads it
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=pool_worker_start,
                               initargs=(unfinished, n))
    broken = object()
    try:
        futures = [pool.submit(fn, item, arg) for item in items]  # the first starts them
        for future in futures:
            future.add_done_callback(lambda _, left=unfinished: _one_less(left))
        if started is not None:
            started()
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except BrokenProcessPool:
                if lost is None:
                    raise
                results.append(broken)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)  # every worker has ended: nothing writes any more
    return [lost(item, "a worker process died (killed, or out of memory?) while this shard "
                       "was running or waiting") if r is broken else r
            for item, r in zip(items, results)]


def stop() -> None:
    """Stop the fork server, if running: the run leaves no process behind, and the
    workers' CPU time reaches our parent's accounting (the server reaps them, we reap it)."""
    from multiprocessing import forkserver

    halt = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)  # 3.8+
    if halt is not None:
        try:
            halt()
        except Exception:  # noqa: BLE001 - it ends with us anyway
            pass


class Refuse(importlib.abc.MetaPathFinder):
    """Refuses to import the package ``name`` (and its modules) while installed."""

    def __init__(self, name: str, why: str):
        self.name, self.why = name, why

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == self.name:
            raise ImportError(f"{self.name} is not loaded in etl's ingest workers: {self.why}")
        return None


# pyarrow imports numpy when it can (60 ms of the fork server's start, before any worker
# can start; measured), only to convert to and from numpy arrays, which ingest never does
NO_NUMPY = Refuse("numpy", "no ingest task uses it, and pyarrow's import of it costs "
                  "every run 60 ms of start-up (etl._preload)")


# glibc malloc: M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX (malloc.h)
_MALLOPT = ((-1, (1 << 31) - 1), (-2, 16 << 20), (-3, 32 << 20), (-4, 0))


def tune_malloc() -> bool:
    """Keep glibc's malloc from handing a worker's big buffers back to the kernel each time.

    A worker allocates and frees the same big buffers over and over: 4 MiB decompressed
    pieces, 8 MiB line batches. By default glibc maps each afresh and trims its heap
    often, so the kernel zeroes the same pages again: half of a zst run's page faults,
    0.1-0.15 s of system time over 1.1 GB (measured). Now everything comes from the heap
    (no mmap), and the heap is never trimmed: a worker keeps the memory it has grown to,
    its own high-water mark, which is the bound anyway, and its next shard reuses it.
    (A zstd window as big as the shard, with ``--long=31``, is not glibc's either: see
    ``etl.libzstd.Windows``, unless zstd is read through backports.zstd.) Arrow's memory
    (jemalloc) and Python's small objects are not glibc's and stay as they were. A
    no-op where the C library has no ``mallopt``; True when applied.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all([mallopt(param, value) == 1 for param, value in _MALLOPT])


def die_with_parent() -> None:
    """Linux: this process is killed when the process that forked it ends. A pool worker
    whose run was killed (``kill -9``, out of memory) otherwise waits for tasks forever,
    and one forked by the ``etl`` command itself would keep the output folder's lock
    open: every later run would find it busy. The fork server does the same when the
    main thread started it (Linux ties this to the thread that forked; a server killed
    so is started again by the next run). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the call: no signal will come
        os._exit(1)


def _one_less(unfinished) -> None:
    with unfinished.get_lock():
        unfinished.value -= 1


_pool: tuple | None = None  # in a local pool worker: (its run's unfinished tasks, workers)


def pool_worker_start(unfinished=None, size: int = 0) -> None:
    """Start-up of a local pool worker: ``worker_start``, and it ends with its parent.
    ``unfinished``: the count of its run's tasks not finished yet, kept by the parent
    (``run_local``), of ``size`` workers, for ``a_core_waits``."""
    global _pool
    die_with_parent()
    worker_start()
    _pool = None if unfinished is None else (unfinished, size)


def a_core_waits() -> bool:
    """In a local pool worker: whether its run has fewer tasks left unfinished than
    workers, so that a worker (a core) has nothing left to do; its task may then read
    ahead in a second thread (``etl.shards.read_ahead``). False in any other process."""
    return _pool is not None and _pool[0].value < _pool[1]


def worker_start() -> None:
    """Start-up of a process that reads shards (our local workers, and the CLI's own
    process when it reads them itself): tune malloc, and spare it pyarrow's pandas import.

    pyarrow imports pandas (0.25 s, measured) at its first ``pa.array`` only to learn
    whether its input could be a pandas object; ingest tasks never pass one. Told once
    that pandas is missing, pyarrow stops asking; pandas stays importable afterwards.
    """
    tune_malloc()
    finder = Refuse("pandas", "pyarrow only asks whether an input could be a pandas object")
    sys.meta_path.insert(0, finder)
    try:
        import pyarrow as pa

        pa.array([0])
    finally:
        sys.meta_path.remove(finder)
