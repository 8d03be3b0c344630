"""Pure: measured results -> ratios, PASS/FAIL against the issue's targets, RESULTS.md text.

Ratios compare throughputs (uncompressed input MB / wall second) measured side by
side in one run: ``× DuckDB`` is a tool's MB/s over DuckDB's for the same codec
(DuckDB through a pipe where it cannot read the codec), ``× limit`` is over the
fastest decompression-only row of that codec's tool (two decompressors at once, or one);
where etl links a faster decoder (xz, bz2), its own decompression-only rows are shown and
etl's ratio over them reported, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.jobs import Step

MB = 1_000_000  # throughput unit: decimal MB of uncompressed input
CLIENTS = 8  # ncat clients in the spooler comparison (bench.data.SPOOL_CLIENTS)
# codec -> (what etl's MB/s is divided by, the least ratio that passes)
SPEED_TARGETS = {
    "zst": ("duckdb", 1.0), "gz": ("duckdb", 1.0), "none": ("duckdb", 1.0),
    "xz": ("limit", 0.8), "bz2": ("limit", 0.8), "zst-long": ("duckdb", 2.0),
}
RSS_LIMIT_MIB = 1024  # peak memory of an etl run, whole process tree
WINDOW_MIB = {"zst-long": 2048}  # plus the zstd window the file declares
GROWTH_LIMIT = 1.10  # peak RSS at 4x input over peak RSS at 1x
LOAD_TARGET = 0.8  # etl load throughput over DuckDB's own CREATE TABLE AS
PG_LOAD_TARGET = 0.8  # etl load into Postgres over psql \copy of the same rows as CSV
NOISY = 0.15  # others' share of the machine above which a verdict is marked noisy
JOB_KINDS = ("etl", "etl-variant", "engine", "bigshard")  # run the whole job, write rows
CODEC_TITLES = {"zst": "zst", "gz": "gz", "none": "plain (none)", "xz": "xz", "bz2": "bz2",
                "zst-long": "zst --long=31 (2 GiB window)"}


@dataclass(frozen=True)
class Result:
    """A Step and what running it gave; ``seconds`` is None for a skipped or failed step."""

    step: Step
    seconds: float | None = None
    max_rss_mib: float | None = None
    tree_mib: float | None = None
    rows: int | None = None
    digest: str | None = None  # a content hash of the rows written, to compare tools
    error: str | None = None
    cpu_seconds: float | None = None  # user + system time of the command's processes
    others_busy: float | None = None  # share of the machine other processes used meanwhile
    rounds: tuple[float | None, ...] = ()  # seconds of every round (None: failed), in order

    @property
    def cores(self) -> float | None:
        """Cores the command kept busy on average."""
        return self.cpu_seconds / self.seconds if self.seconds and self.cpu_seconds else None

    @property
    def mb_per_s(self) -> float | None:
        if not self.seconds or not self.step.bytes_in:
            return None
        return self.step.bytes_in / MB / self.seconds

    def round_mb_per_s(self, i: int) -> float | None:
        """MB/s of round ``i`` alone (None when it failed or was not run)."""
        if i >= len(self.rounds) or not self.rounds[i] or not self.step.bytes_in:
            return None
        return self.step.bytes_in / MB / self.rounds[i]


def verdict(value: float | None, minimum: float) -> str:
    """PASS when ``value`` reaches ``minimum``; FAIL otherwise, or when nothing was measured."""
    return "PASS" if value is not None and value >= minimum else "FAIL"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _find(results: list[Result], codec: str, kind: str, tool_prefix: str = "") -> Result | None:
    for r in results:
        if (r.step.codec == codec and r.step.kind == kind and r.step.tool.startswith(tool_prefix)
                and r.seconds is not None):
            return r
    return None


def duckdb_of(results: list[Result], codec: str) -> Result | None:
    return _find(results, codec, "engine", "duckdb")


def etl_of(results: list[Result], codec: str) -> Result | None:
    return _find(results, codec, "etl")


def limit_of(results: list[Result], codec: str) -> float | None:
    """The 2-core decompression-only MB/s of ``codec``: the fastest limit row.

    One-core rows count too: two cores can always do what one does, and on a busy
    machine two decompressors at once can come out slower than one alone.
    """
    return _fastest(results, codec, ("limit1", "limit2"))


def decoder_of(results: list[Result], codec: str) -> float | None:
    """The MB/s of decompression alone through the decoder etl links (``bench/decode.py``),
    where it is not the tool's: the fastest of its rows (one core or two), as ``limit_of``."""
    return _fastest(results, codec, ("decoder1", "decoder2"))


def _fastest(results: list[Result], codec: str, kinds: tuple[str, ...]) -> float | None:
    return max((r.mb_per_s for r in results if r.step.codec == codec
                and r.step.kind in kinds and r.mb_per_s), default=None)


def speed_ratio(results: list[Result], codec: str) -> float | None:
    """etl's ratio for the codec's target: over DuckDB or over the 2-core limit."""
    against, _ = SPEED_TARGETS[codec]
    etl = etl_of(results, codec)
    base = limit_of(results, codec) if against == "limit" else \
        (duckdb_of(results, codec).mb_per_s if duckdb_of(results, codec) else None)
    return ratio(etl.mb_per_s if etl else None, base)


def round_ratios(results: list[Result], codec: str) -> list[float | None]:
    """The target's ratio within each round: etl against its reference of the same round
    (the limit: the fastest limit row of that round), so the spread the verdict (fastest
    against fastest) hides is seen."""
    against, _ = SPEED_TARGETS[codec]
    etl = etl_of(results, codec)
    if etl is None:
        return []
    if against == "limit":
        refs = [r for r in results if r.step.codec == codec and r.step.kind in ("limit1", "limit2")]
    else:
        refs = [r for r in (duckdb_of(results, codec),) if r]
    out = []
    for i in range(len(etl.rounds)):
        base = max((m for m in (r.round_mb_per_s(i) for r in refs) if m), default=None)
        out.append(ratio(etl.round_mb_per_s(i), base))
    return out


def load_round_ratios(etl: Result, own: Result) -> list[float | None]:
    """etl's load throughput over its reference's, round by round."""
    n = min(len(etl.rounds), len(own.rounds))
    return [ratio(own.rounds[i], etl.rounds[i]) for i in range(n)]


def _with_rounds(value: float | None, rounds: list[float | None]) -> str:
    """``1.81×``, and each round's own ratio when there were several."""
    if len(rounds) < 2:
        return _times(value)
    return f"{_times(value)} (rounds: {', '.join(_times(r) for r in rounds)})"


def _limit_result(results: list[Result], codec: str) -> Result | None:
    best = limit_of(results, codec)
    return next((r for r in results if r.step.codec == codec
                 and r.step.kind in ("limit1", "limit2") and r.mb_per_s == best), None)


def noise(results: list[Result], codec: str) -> float:
    """The most other processes took of the machine during the runs a codec's ratio uses."""
    against, _ = SPEED_TARGETS[codec]
    ref = _limit_result(results, codec) if against == "limit" else duckdb_of(results, codec)
    return max((r.others_busy or 0.0 for r in (etl_of(results, codec), ref) if r), default=0.0)


def noisy_note(share: float) -> str:
    return f" (noisy: other processes used {share:.0%} of the machine)" if share > NOISY else ""


def rss_limit(codec: str) -> float:
    return RSS_LIMIT_MIB + WINDOW_MIB.get(codec, 0)


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def _times(value: float | None) -> str:
    return _num(value, "{:.2f}×")


def _same_rows(r: Result, etl: Result | None) -> str:
    if r.rows is None or r.step.kind.startswith(("limit", "decoder")):
        return "—"
    if etl is None or etl.rows is None or r is etl:
        return f"{r.rows:,}"
    if r.rows != etl.rows:
        return f"{r.rows:,} (≠ etl)"
    if r.digest and etl.digest and r.digest != etl.digest:
        return f"{r.rows:,} (same count, other content)"
    return f"{r.rows:,} (= etl)"


def _row(r: Result, results: list[Result]) -> str:
    codec = r.step.codec
    duck, etl, limit = duckdb_of(results, codec), etl_of(results, codec), limit_of(results, codec)
    to_duck = _times(ratio(r.mb_per_s, duck.mb_per_s if duck else None))
    to_limit = _times(ratio(r.mb_per_s, limit))
    tree = _num(r.tree_mib, "{:.0f}")
    if r is etl:
        against, minimum = SPEED_TARGETS[codec]
        mark = f" **{verdict(speed_ratio(results, codec), minimum)}** (≥ {minimum})"
        to_duck, to_limit = (to_duck + mark, to_limit) if against == "duckdb" else \
            (to_duck, to_limit + mark)
        tree += f" {'PASS' if (r.tree_mib or 0) <= rss_limit(codec) else '**FAIL**'}"
    note = r.error or r.step.note
    busy = _num(r.others_busy * 100 if r.others_busy is not None else None, "{:.0f}%")
    return (f"| {r.step.tool} | {_num(r.seconds)} | {_num(r.mb_per_s, '{:.0f}')} | {to_duck} | "
            f"{to_limit} | {_num(r.cores, '{:.2f}')} | {busy} | "
            f"{_num(r.max_rss_mib, '{:.0f}')} | {tree} | {_same_rows(r, etl)} | {note} |")


CODEC_HEADER = ["| tool | seconds | MB/s | × DuckDB | × 2-core limit | cores used | others' "
                "load | peak RSS MiB, largest process | peak MiB, whole tree (PSS) | "
                "rows written | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]


def codec_table(results: list[Result], codec: str) -> list[str]:
    """The markdown table of one codec, rows in run order."""
    mine = [r for r in results if r.step.codec == codec and r.step.kind in
            ("limit1", "limit2", "decoder1", "decoder2", "etl", "etl-variant", "engine")]
    return [f"### {CODEC_TITLES.get(codec, codec)}", "", *CODEC_HEADER,
            *(_row(r, results) for r in mine), ""]


def memory_check(results: list[Result]) -> tuple[Result, Result, float | None] | None:
    """(1x run, 4x run, growth of the largest process's peak RSS) when both ran."""
    runs = [r for r in results if r.step.kind == "memory" and r.seconds is not None]
    if len(runs) < 2:
        return None
    return runs[0], runs[1], ratio(runs[1].max_rss_mib, runs[0].max_rss_mib)


BIG_TEXT = ("One file holding the whole 1.1 GB: etl cuts a file that can split (here "
            "zstd frames, plain text) into parts that run in parallel on both workers, or, with "
            "`--part-mb 0`, reads it as one stream on one worker.")


def big_shard_lines(results: list[Result]) -> list[str]:
    """The one-big-shard table and, per file, in parts over one stream."""
    runs = [r for r in results if r.step.kind == "bigshard"]
    if not runs:
        return ["(not run)"]
    lines = ["| run | seconds | MB/s | cores used | peak MiB, whole tree (PSS) | rows written |"
             " note |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.step.tool} | {_num(r.seconds, '{:.1f}')} | "
                     f"{_num(r.mb_per_s, '{:.0f}')} | {_num(r.cores, '{:.2f}')} | "
                     f"{_num(r.tree_mib, '{:.0f}')} | {_num(r.rows, '{:,}')} | "
                     f"{r.error or r.step.note} |")
    lines.append("")
    for parts, stream in zip(runs[::2], runs[1::2]):
        what = parts.step.tool.split(", ")[1]
        lines.append(f"- {what}: in parts {_times(ratio(stream.seconds, parts.seconds))} "
                     "the speed of one stream")
    return lines


def load_check(results: list[Result], kind: str = "load"
               ) -> tuple[Result, Result, float | None] | None:
    """(etl load, the reference, etl's throughput over the reference's) when both ran;
    ``kind``: load (DuckDB CTAS) or pgload (psql \\copy)."""
    runs = [r for r in results if r.step.kind == kind and r.seconds is not None]
    if len(runs) < 2:
        return None
    etl, own = runs
    return etl, own, ratio(own.seconds, etl.seconds)


def spool_check(results: list[Result]) -> tuple[Result, Result, float | None] | None:
    """(etl spool, socat, the spooler's throughput over socat's) when both ran."""
    runs = [r for r in results if r.step.kind == "spool" and r.seconds is not None]
    if len(runs) < 2:
        return None
    etl, socat = runs
    return etl, socat, ratio(socat.seconds, etl.seconds)


def target_lines(results: list[Result], codecs: tuple[str, ...]) -> list[str]:
    """One markdown row per target: what, measured, PASS/FAIL."""
    rows = []
    for codec in codecs:
        against, minimum = SPEED_TARGETS[codec]
        value = speed_ratio(results, codec)
        what = "DuckDB" + (" through a pipe" if codec not in ("zst", "gz", "none") else "") \
            if against == "duckdb" else "the 2-core decompression limit"
        rows.append((f"{CODEC_TITLES[codec]}: etl ≥ {minimum}× {what}",
                     _with_rounds(value, round_ratios(results, codec)),
                     verdict(value, minimum) + noisy_note(noise(results, codec))))
        own = own_decoder_ratio(results, codec)
        if own is not None:
            rows.append((f"{CODEC_TITLES[codec]}: etl over the decoder it links, alone on 2 "
                         "cores (shown, no target)", _times(own), "—"))
    for codec in codecs:
        etl = etl_of(results, codec)
        if etl is not None:
            rows.append((f"{codec}: etl peak memory (whole tree) ≤ {rss_limit(codec):.0f} MiB",
                         f"{etl.tree_mib:.0f} MiB",
                         "PASS" if etl.tree_mib <= rss_limit(codec) else "FAIL"))
    rows += _memory_and_load_targets(results)
    rows.append(("rows written identical across tools", *_rows_agree(results)))
    lines = ["| target | measured | result |", "|---|---|---|"]
    return lines + [f"| {a} | {b} | {c.replace('FAIL', '**FAIL**', 1)} |" for a, b, c in rows]


def own_decoder_ratio(results: list[Result], codec: str) -> float | None:
    """etl's MB/s over decompression alone through the decoder it links, where measured."""
    etl = etl_of(results, codec)
    return ratio(etl.mb_per_s if etl else None, decoder_of(results, codec))


def _memory_and_load_targets(results: list[Result]) -> list[tuple[str, str, str]]:
    rows = []
    mem = memory_check(results)
    if mem:
        one, four, growth = mem
        rows.append((f"etl peak RSS at 4× input within {GROWTH_LIMIT - 1:.0%} of 1×",
                     f"{one.max_rss_mib:.0f} → {four.max_rss_mib:.0f} MiB ({_times(growth)})",
                     "PASS" if growth is not None and growth <= GROWTH_LIMIT else "FAIL"))
    load = load_check(results)
    if load:
        busy = max(r.others_busy or 0.0 for r in load[:2])
        rows.append((f"DuckDB load ≥ {LOAD_TARGET}× CREATE TABLE AS",
                     _with_rounds(load[2], load_round_ratios(*load[:2])),
                     verdict(load[2], LOAD_TARGET) + noisy_note(busy)))
    pg = load_check(results, "pgload")
    if pg:
        rows.append((f"Postgres load ≥ {PG_LOAD_TARGET}× psql \\copy",
                     _with_rounds(pg[2], load_round_ratios(*pg[:2])),
                     verdict(pg[2], PG_LOAD_TARGET)))
    spool = spool_check(results)
    if spool:
        etl, socat, value = spool
        same = etl.rows is not None and etl.rows == socat.rows
        rows.append((f"spooler, {CLIENTS} ncat clients: every line stored; MB/s and lines/s "
                     "over socat to files (no target)",
                     f"{_num(etl.mb_per_s, '{:.0f}')} MB/s, {_rate(etl)} lines/s = "
                     f"{_times(value)} socat", "PASS" if same else "FAIL"))
    return rows


def _rate(r: Result) -> str:
    return _num(r.rows / r.seconds if r.rows and r.seconds else None, "{:,.0f}")


def _rows_agree(results: list[Result]) -> tuple[str, str]:
    bad = []
    for r in results:
        etl = etl_of(results, r.step.codec)
        if r.step.kind not in JOB_KINDS or r.rows is None or etl is None:
            continue
        if r.rows != etl.rows or (r.digest and etl.digest and r.digest != etl.digest):
            bad.append(f"{r.step.codec}/{r.step.tool}")
    checked = sum(r.step.kind in JOB_KINDS and r.rows is not None for r in results)
    if bad:
        return f"differ: {', '.join(bad)}", "FAIL"
    return f"{checked} runs agree (count and content)", "PASS" if checked else "FAIL"


def memory_lines(results: list[Result]) -> list[str]:
    mem = memory_check(results)
    if not mem:
        return ["(not run)"]
    lines = ["| run | input MB | seconds | MB/s | peak RSS MiB, largest process | "
             "peak MiB, whole tree (PSS) | rows written |", "|---|---|---|---|---|---|---|"]
    for r in mem[:2]:
        lines.append(f"| {r.step.tool} | {r.step.bytes_in / MB:,.0f} | {r.seconds:.1f} | "
                     f"{_num(r.mb_per_s, '{:.0f}')} | {r.max_rss_mib:.0f} | {r.tree_mib:.0f} | "
                     f"{_num(r.rows, '{:,}')} |")
    growth = mem[2]
    lines += ["", f"4× over 1× (largest process): {_times(growth)} "
              f"**{'PASS' if growth is not None and growth <= GROWTH_LIMIT else 'FAIL'}** "
              f"(≤ {GROWTH_LIMIT}×)"]
    return lines


def load_lines(results: list[Result]) -> list[str]:
    """The load table: etl against its reference, DuckDB then Postgres, with the ratio."""
    lines = ["| load | seconds | rows | rows/s | × reference | peak RSS MiB | note |",
             "|---|---|---|---|---|---|---|"]
    for kind, target, ref in (("load", LOAD_TARGET, "CREATE TABLE AS"),
                              ("pgload", PG_LOAD_TARGET, "psql \\copy")):
        check = load_check(results, kind)
        if check:
            etl, own, value = check
            for r, cell in ((etl, f"{_times(value)} {ref} **{verdict(value, target)}** "
                                  f"(≥ {target})"), (own, "1.00×")):
                lines.append(f"| {r.step.tool} | {r.seconds:.1f} | {_num(r.rows, '{:,}')} | "
                             f"{_rate(r)} | {cell} | {r.max_rss_mib:.0f} | "
                             f"{r.error or r.step.note} |")
        lines += [f"| {r.step.tool} | — | — | — | — | — | {r.error or r.step.note} |"
                  for r in results if r.step.kind == kind and r.seconds is None]
    return lines


def spool_lines(results: list[Result], sent_lines: int) -> list[str]:
    """The spooler table: both receivers, MB/s and lines/s, lines stored against lines sent."""
    lines = ["| receiver | seconds | MB/s | lines/s | × socat | peak MiB, whole tree (PSS) | "
             "lines stored | note |", "|---|---|---|---|---|---|---|---|"]
    check = spool_check(results)
    for r in results:
        if r.step.kind != "spool":
            continue
        if r.seconds is None:
            lines.append(f"| {r.step.tool} | — | — | — | — | — | — | {r.error or r.step.note} |")
            continue
        to_socat = _times(ratio(check[1].seconds, r.seconds)) if check else "—"
        stored = "—" if r.rows is None else f"{r.rows:,}" + (
            " (= sent)" if r.rows == sent_lines else f" (≠ {sent_lines:,} sent)")
        lines.append(f"| {r.step.tool} | {r.seconds:.1f} | {_num(r.mb_per_s, '{:.0f}')} | "
                     f"{_rate(r)} | {to_socat} | {_num(r.tree_mib, '{:.0f}')} | {stored} | "
                     f"{r.error or r.step.note} |")
    return lines


def quick_lines(results: list[Result]) -> list[str]:
    """The ``--quick`` summary: zst over DuckDB, xz over the 2-core limit."""
    out = []
    for codec in ("zst", "xz"):
        against, minimum = SPEED_TARGETS[codec]
        etl = etl_of(results, codec)
        base = duckdb_of(results, codec) if against == "duckdb" else None
        base_speed = base.mb_per_s if base else limit_of(results, codec)
        value = speed_ratio(results, codec)
        out.append(f"{codec}: etl {_num(etl.mb_per_s if etl else None, '{:.0f}')} MB/s vs "
                   f"{'DuckDB' if against == 'duckdb' else '2-core decompression'} "
                   f"{_num(base_speed, '{:.0f}')} MB/s = "
                   f"{_with_rounds(value, round_ratios(results, codec))} "
                   f"{verdict(value, minimum)} (target ≥ {minimum}×)"
                   f"{noisy_note(noise(results, codec))}")
        own = own_decoder_ratio(results, codec)
        if own is not None:
            alone = _num(decoder_of(results, codec), "{:.0f}")
            out.append(f"{codec}: etl over its own decoder alone ({alone} MB/s on 2 cores) = "
                       f"{_times(own)} (shown, no target)")
    return out


def notes_lines(results: list[Result], codecs: tuple[str, ...]) -> list[str]:
    """Sentences computed from the numbers: how many cores etl used, what the variants gave."""
    lines = []
    etl, mem = etl_of(results, "zst"), memory_check(results)
    if etl and mem and mem[0].mb_per_s:
        lines.append(f"- Cores: etl on 4 zst shards with the processes scheduler kept "
                     f"{_num(etl.cores, '{:.2f}')} cores busy and ran at {etl.mb_per_s:.0f} MB/s; "
                     f"synchronous on one shard {mem[0].mb_per_s:.0f} MB/s, "
                     f"{_num(mem[0].cores, '{:.2f}')} cores busy (one task, its shard read "
                     "ahead of its parsing in a second thread).")
    for codec in codecs:
        base = etl_of(results, codec)
        for r in results:
            if r.step.kind == "etl-variant" and r.step.codec == codec and base and r.mb_per_s:
                gain = r.mb_per_s / base.mb_per_s
                target = speed_ratio(results, codec)
                lines.append(f"- {codec}: {r.step.tool}: {r.mb_per_s:.0f} MB/s, {gain:.2f}× "
                             f"etl as it is; {_times(target * gain if target else None)} on "
                             f"its target (≥ {SPEED_TARGETS[codec][1]}×).")
    return lines


def dataset_lines(ds, codecs: tuple[str, ...]) -> list[str]:
    """Sizes of the inputs: one row per codec (``ds`` is a bench.data.Dataset)."""
    from bench.data import describe

    lines = ["| codec | files | compressed MB | uncompressed MB | ratio |", "|---|---|---|---|---|"]
    for codec, size, factor in describe(ds):
        if codec in codecs:
            lines.append(f"| {CODEC_TITLES[codec]} | {ds.shards} | {size / MB:,.0f} | "
                         f"{ds.plain_bytes() / MB:,.0f} | {factor:.1f} |")
    return lines


def pass_rate(results: list[Result], lines: int) -> str:
    etl = next((r for r in results if r.step.kind == "etl" and r.rows), None)
    return f"{etl.rows:,} of {lines:,} rows pass ({etl.rows / lines:.1%})" if etl else "—"


LOAD_TEXT = (
    "etl's zst Parquet (4 shards) into an empty warehouse. DuckDB: `etl load` (table made by "
    "etl with a primary key, upsert by key, each file recorded in `_etl_loads` in the "
    "same transaction) against DuckDB's own `CREATE TABLE AS SELECT * FROM read_parquet(...)` "
    "(no key, no bookkeeping). Postgres, on a throwaway local cluster (fsync off, as the "
    "tests run it): `etl load` against `psql \\copy` of the same rows, exported once as CSV "
    "and not timed, into the same table etl creates (primary key included), made empty before "
    "each run. Seconds are whole commands, Python start-up included. (The server's own work "
    "counts as other processes' load in the Postgres rows.)")
SPOOL_TEXT = (
    "The plain shards cut at line ends into {clients} streams, sent at once by {clients} "
    "`ncat --send-only` clients to `etl spool` (zst shards, fsynced, sealed) or to {clients} "
    "`socat -u TCP-LISTEN:... CREATE:file` listeners (plain files, no fsync): the raw "
    "network-to-disk pace. Seconds run from launching the clients (receivers already "
    "listening) until every byte is on disk: the spooler drained every connection after "
    "SIGTERM, sealed its shards and exited; every socat exited. Lines are counted in what "
    "was stored (the spooler's sealed shards decompressed) and compared with the lines sent.")


def render(ds, results: list[Result], codecs: tuple[str, ...], machine: list[str],
           repeat: int, command: str = "python bench/run.py") -> str:
    """The whole of RESULTS.md; ``command``: the bench command line that measured it."""
    import time

    runs = "one run per step" if repeat == 1 else f"fastest of {repeat} runs per step"
    parts = [
        f"# Benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, `{command}`)", "",
        *machine, "",
        "Job (bench/bench_schema.toml, the same in every tool): keep 20 subreddits, project and "
        "type 6 columns (created_utc from int, float or numeric string), write zstd Parquet in "
        f"`created_utc_date=` folders. {pass_rate(results, ds.lines)}: the 20 names are "
        "etl.sample's ranks 7-26, the top 6 skipped.", "",
        f"Data: `etl sample --bad-rate 0 --seed 1`, {ds.lines:,} lines in {ds.shards} shards, "
        "compressed by the real tools (bench/data.py):", "",
        *dataset_lines(ds, codecs), "",
        f"All steps ran one after another in this one run ({runs}; the rounds interleave "
        "the steps, and a target's ratio within each round, etl against its reference of the "
        "same round, follows its verdict's ratio, fastest against fastest, in brackets). "
        "MB/s = uncompressed input "
        "MB / wall seconds. × DuckDB: over DuckDB's MB/s for the same codec (through a pipe "
        "where it cannot read the codec). × 2-core limit: over the fastest decompression-only "
        "row of the codec's command-line tool, output to /dev/null (two decompressors at once "
        "over alternate shards, or one alone when a busy machine made that faster). Where etl "
        "links a faster decoder than the tool's (xz, bz2), decompression alone through that "
        "decoder is shown too, with etl's ratio over it, but the target stays the tool's limit, "
        "as the issue measured it. Peak RSS: the largest "
        "single process (`ru_maxrss` of the reaped children); whole tree: the peak of the "
        "summed PSS of every process of the command, "
        "sampled every 0.2 s (the memory targets are judged on it). Cores used: the command's "
        "user + system CPU seconds over its wall seconds. Others' load: the share of both "
        "cores that other processes of this shared machine kept busy meanwhile (from "
        f"/proc/stat); a verdict whose runs saw more than {NOISY:.0%} says so. Rows written "
        "are counted in the Parquet output and compared with etl's, count and a content "
        "hash.", "",
        "## Targets", "", *target_lines(results, codecs), "",
        "## Ingest, per codec", "",
    ]
    for codec in codecs:
        parts += codec_table(results, codec)
    parts += ["## Memory: etl at 1× and 4× input (zst, synchronous scheduler)", "",
              *memory_lines(results), "", "## One big shard", "", BIG_TEXT, "",
              *big_shard_lines(results), "", "## Loading", "", LOAD_TEXT, "",
              *load_lines(results), "", "## Spooler", "", SPOOL_TEXT.format(clients=CLIENTS), "",
              *spool_lines(results, ds.lines), "", "## Notes", "", *notes_lines(results, codecs),
              ""]
    return "\n".join(parts)
