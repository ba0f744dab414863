"""The multi-process read path keeps what it decoded from scrape to scrape: what it keeps
must never outlive what the files say (keys that grow, a file rewritten in place, the
archive replaced, a file of the previous format, threads and forks scraping at once)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import struct
import subprocess
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from prometheus_client import CollectorRegistry

from jobmetrics import JobMetrics
from jobmetrics.cells import Key
from jobmetrics.durations import COUNT
from jobmetrics.multiprocess.valuefile import ValueFile, encode_key, read_cells
from promcheck import promtool_check, samples, scrape

P = "harbor_jobservice_"
CTX = multiprocessing.get_context("fork")


def total(m: JobMetrics, task_type: str, status: str = "success") -> float | None:
    return samples(scrape(m.registry)).get(
        (P + "task_total", (("status", status), ("type", task_type))))


@pytest.fixture
def mp(tmp_path: Path) -> JobMetrics:
    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    with m.track_task("a"):
        pass
    return m


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a process that stays alive (its file is read as a live process's)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


def cells_of(m: JobMetrics, task_type: str) -> List[Tuple[Key, float]]:
    """This process's cells of task type ``a``, relabelled as ``task_type``."""
    own = Path(m.settings.multiprocess_dir) / f"jobmetrics-{os.getpid()}.db"  # type: ignore[arg-type]
    return [((fam, tuple(task_type if v == "a" else v for v in labels), part), value)
            for (fam, labels, part), value in read_cells(str(own)) if "a" in labels]


def write(f: ValueFile, cells: List[Tuple[Key, float]]) -> List[int]:
    return [f.cell(key, value) for key, value in cells]


def test_keys_added_after_a_scrape_are_read(mp: JobMetrics, live_pid: int) -> None:
    f = ValueFile(f"{mp.settings.multiprocess_dir}/jobmetrics-{live_pid}.db")
    write(f, cells_of(mp, "x"))
    assert total(mp, "x") == 1.0
    y = cells_of(mp, "y")
    handles = write(f, y)  # the same file grows: only the new entries are decoded
    assert (total(mp, "x"), total(mp, "y"), total(mp, "a")) == (1.0, 1.0, 1.0)
    count = next(h for h, (k, v) in zip(handles, y)
                 if k[0] == P + "task_process_time_seconds" and k[1][1] == "success"
                 and k[2] == (0, COUNT))
    f.values[count] = 5.0  # a value changes in place
    assert total(mp, "y") == 5.0


def test_a_file_rewritten_in_place_is_decoded_again(mp: JobMetrics, live_pid: int) -> None:
    path = f"{mp.settings.multiprocess_dir}/jobmetrics-{live_pid}.db"
    write(ValueFile(path), cells_of(mp, "x"))
    assert total(mp, "x") == 1.0
    # The same inode, entries of the same sizes, other keys (O_TRUNC): only the file's
    # nonce tells the reader its keys are not the ones it decoded.
    write(ValueFile(path), cells_of(mp, "z"))
    g = samples(scrape(mp.registry))
    assert g[(P + "task_total", (("status", "success"), ("type", "z")))] == 1.0
    assert (P + "task_total", (("status", "success"), ("type", "x"))) not in g


def test_the_archive_is_read_again_when_replaced(tmp_path: Path) -> None:
    def child(task_type: str) -> None:
        m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                       process_collectors=False)
        for _ in range(3):
            with m.track_task(task_type):
                pass

    m = JobMetrics(registry=CollectorRegistry(), multiprocess_dir=str(tmp_path),
                   process_collectors=False)
    for n, task_type in enumerate(["b", "b", "c"], start=1):
        p = CTX.Process(target=child, args=(task_type,))
        p.start()
        p.join()
        text = scrape(m.registry)  # folds the dead child into a new archive
        g = samples(text)
        assert g[(P + "task_total", (("status", "success"), ("type", "b")))] == min(n, 2) * 3
        assert scrape(m.registry) == text  # the archive unchanged: the same answer
    assert total(m, "c") == 3.0
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["jobmetrics-archive.db", f"jobmetrics-{os.getpid()}.db", "jobmetrics-budgets.keys",
         "jobmetrics.lock"])


@pytest.mark.parametrize("magic,header", [(b"JMv2", b""), (b"JMv3", b"nonce-01")])
def test_a_file_of_an_earlier_format_is_read_and_folded(mp: JobMetrics, magic: bytes,
                                                        header: bytes) -> None:
    # The entries of JMv4, after JMv3's 16-byte header (a nonce, no writer start) or
    # JMv2's 8-byte one (neither).
    entries = b""
    for key, value in cells_of(mp, "old"):
        raw = encode_key(key)
        pad = b" " * ((8 - (4 + len(raw)) % 8) % 8)
        entries += len(raw).to_bytes(4, "little") + raw + pad + struct.pack("<d", value)
    old = Path(mp.settings.multiprocess_dir) / "jobmetrics-999999990.db"  # type: ignore[arg-type]
    used = 8 + len(header) + len(entries)
    old.write_bytes(magic + used.to_bytes(4, "little") + header + entries)
    assert total(mp, "old") == 1.0
    assert not old.exists()  # a dead process's: folded into the archive
    assert (total(mp, "old"), total(mp, "a")) == (1.0, 1.0)


def test_threads_scraping_at_once_agree(mp: JobMetrics, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    import jobmetrics._errors

    jobmetrics._errors._reported.clear()
    results: List[float | None] = []
    done = threading.Event()

    def writer() -> None:
        for i in range(300):
            with mp.track_task(f"w{i % 7}"):
                pass
        done.set()

    def reader() -> None:
        while not done.is_set():
            total(mp, "a")
        results.append(total(mp, "w3"))

    with caplog.at_level(logging.ERROR, logger="jobmetrics"):
        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [43.0, 43.0, 43.0]
    assert not caplog.records


def test_a_forked_child_scrapes_what_its_parent_does(mp: JobMetrics) -> None:
    assert total(mp, "a") == 1.0  # the parent has planned its reads
    recv, send = CTX.Pipe(duplex=False)

    def child() -> None:
        with mp.track_task("kid"):
            pass
        send.send((total(mp, "a"), total(mp, "kid")))

    p = CTX.Process(target=child)
    p.start()
    got = recv.recv()
    p.join()
    assert got == (1.0, 1.0)
    assert (total(mp, "a"), total(mp, "kid")) == (1.0, 1.0)
    promtool_check(scrape(mp.registry))


def test_a_merger_past_its_bound_starts_again(mp: JobMetrics, live_pid: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import jobmetrics.collect
    from jobmetrics.multiprocess.directory import _reader

    write(ValueFile(f"{mp.settings.multiprocess_dir}/jobmetrics-{live_pid}.db"),
          cells_of(mp, "x"))
    first = scrape(mp.registry)
    monkeypatch.setattr(jobmetrics.collect, "_MAX_SLOTS", 0)  # every scrape: a new one
    for _ in range(5):
        assert scrape(mp.registry) == first
    tables = _reader(mp.settings.multiprocess_dir)._files.values()  # type: ignore[arg-type]
    assert [len(c.table.plans) for c in tables] == [1, 1]  # the old plans were let go
