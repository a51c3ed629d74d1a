"""Reading a file someone else wrote (common/files): within a bound, or one sentence of the caller's
error type that names the file, what is wrong with it and the caller's fix."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from detlit.common import files
from detlit.common.files import TooLarge, read_at_most, read_bounded
from detlit.errors import ConfigError, DataError, DetlitError, WeightsError

FIX = "pass the file detlit wrote"


def _within(seconds: float, call: Callable[[], object]) -> BaseException | object:
    """What ``call`` returns or raises, asserting it ends within ``seconds`` (a FIFO opened for
    reading waits for a writer forever: the call runs on a daemon thread, so a hang fails the test)."""
    outcome: list[BaseException | object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as err:  # handed to the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("error", [ConfigError, DataError, WeightsError])
def test_a_file_over_the_limit_is_one_sentence_with_both_sizes(tmp_path: Path, error: type[DetlitError]) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1234)
    with pytest.raises(error) as raised:
        read_bounded(big, 1000, error, FIX)
    assert type(raised.value) is error
    assert str(raised.value) == f"{big} is 1,234 bytes, more than the 1,000 bytes detlit reads of it; {FIX}"
    with pytest.raises(error, match=r"is 1,234 bytes, more than the 1,233 bytes detlit reads of it"):
        read_bounded(big, 1233, error, FIX)  # one byte over is over


def test_a_sparse_file_is_refused_from_its_size_before_it_is_read(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.jsonl"
    with sparse.open("wb") as handle:  # 4 GiB and one byte announced, no disk space taken
        handle.truncate(4 * 2**30 + 1)
    with pytest.raises(ConfigError) as raised:
        read_bounded(sparse, 2**20, ConfigError, FIX)
    assert str(raised.value) == (
        f"{sparse} is 4,294,967,297 bytes, more than the 1,048,576 bytes detlit reads of it; {FIX}"
    )


def test_a_file_within_the_limit_is_returned_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4 + b"\r\n\x00end"  # every byte value, CR LF kept as they are
    path = tmp_path / "ok.bin"
    path.write_bytes(data)
    assert read_bounded(path, len(data), DataError, FIX) == data  # exactly at the limit
    assert read_bounded(path, 10 * len(data), DataError, FIX) == data
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert read_bounded(empty, 0, DataError, FIX) == b""


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    raised = _within(10, lambda: read_bounded(fifo, 1000, WeightsError, FIX))
    assert isinstance(raised, WeightsError)
    assert str(raised) == f"{fifo} is a named pipe (FIFO), not a regular file; {FIX}"


def test_a_fifo_put_where_a_checked_file_was_is_opened_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was checked, then replaced by a pipe before it was opened: the open does not wait
    for a writer, and the sentence names what is there now."""
    fifo = tmp_path / "swapped.xml"
    os.mkfifo(fifo)
    raised = _within(10, lambda: read_at_most(fifo, 1000))
    assert isinstance(raised, TooLarge), "read_at_most reads regular files only"
    checks = iter([None])  # the first check saw a regular file; later ones ask the filesystem
    real = files.not_a_file
    monkeypatch.setattr(files, "not_a_file", lambda path: next(checks, real(path)))
    raised = _within(10, lambda: read_bounded(fifo, 1000, DataError, FIX))
    assert isinstance(raised, DataError)
    assert str(raised) == f"{fifo} is a named pipe (FIFO), not a regular file; {FIX}"


def test_a_folder_and_a_missing_file_are_one_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "mistakes.csv"
    folder.mkdir()
    with pytest.raises(DataError) as raised:
        read_bounded(folder, 1000, DataError, FIX)
    assert str(raised.value) == f"{folder} is a folder, not a file; {FIX}"
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as raised_missing:
        read_bounded(missing, 1000, ConfigError, FIX)
    assert str(raised_missing.value) == f"{missing} does not exist; {FIX}"


def test_a_character_device_is_refused_before_it_is_read() -> None:
    zero = Path("/dev/zero")  # never ends: reading it would fill memory up to the limit
    if not zero.exists():
        pytest.skip("no /dev/zero here")
    raised = _within(10, lambda: read_bounded(zero, 2**30, DataError, FIX))
    assert isinstance(raised, DataError)
    assert str(raised) == f"/dev/zero is a character device, not a regular file; {FIX}"


def test_an_unreadable_file_is_one_sentence_with_the_reason(tmp_path: Path) -> None:
    locked = tmp_path / "locked.yaml"
    locked.write_bytes(b"a: 1\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: a file without read permission is still readable")
        with pytest.raises(ConfigError) as raised:
            read_bounded(locked, 1000, ConfigError, FIX)
        assert str(raised.value) == f"{locked} cannot be read (Permission denied); {FIX}"
        assert isinstance(raised.value.__cause__, PermissionError)
    finally:
        locked.chmod(0o600)


def test_a_regular_file_the_kernel_refuses_to_read_is_one_sentence_even_for_root() -> None:
    """``/proc/self/mem`` is a regular file of 0 bytes whose first page (address 0) no process maps:
    reading it fails with EIO for everyone, root included."""
    mem = Path("/proc/self/mem")
    if not mem.is_file():
        pytest.skip("no /proc/self/mem here")
    with pytest.raises(WeightsError) as raised:
        read_bounded(mem, 1000, WeightsError, FIX)
    assert str(raised.value) == f"{mem} cannot be read (Input/output error); {FIX}"
    assert isinstance(raised.value.__cause__, OSError)
