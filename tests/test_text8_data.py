"""text8 data: alphabet, file formats (plain and zip), download, split, windows."""

import http.client
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.data import DataError
from plmu.data import text8 as t8

FIXTURE = Path(__file__).parent / "fixtures" / "text8" / "text8"


def write_zip(path: Path, data: bytes, member: str = "text8") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
    return path


def test_alphabet_is_space_and_lowercase_letters():
    assert t8.ALPHABET == " " + "abcdefghijklmnopqrstuvwxyz"
    assert t8.VOCAB_SIZE == 27


@given(st.text(alphabet=t8.ALPHABET, max_size=200))
def test_encode_decode_roundtrip(text):
    ids = t8.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert t8.decode(ids) == text


def test_encode_names_the_argument_and_the_bad_characters():
    with pytest.raises(ValueError, match=r"prompt .*'!H'"):
        t8.encode("Hi there!", name="prompt")


@given(st.text(max_size=200))
def test_to_text8_alphabet_always_gives_the_alphabet(text):
    clean = t8.to_text8_alphabet(text)
    assert set(clean) <= set(t8.ALPHABET)
    assert "  " not in clean


def test_to_text8_alphabet_matches_text8_conventions():
    assert (
        t8.to_text8_alphabet("In 1984, Orwell's book!") == "in one nine eight four orwell s book "
    )


def test_fixture_is_in_the_real_format():
    data = FIXTURE.read_bytes()
    assert data.startswith(b" ") and not data.endswith(b"\n")
    assert set(data.decode()) <= set(t8.ALPHABET)


def test_load_plain_file(tmp_path):
    (tmp_path / "text8").write_bytes(FIXTURE.read_bytes() + b"\n")  # trailing newline dropped
    ids = t8.load_text8(tmp_path, download=False)
    assert ids.dtype == np.uint8
    assert t8.decode(ids) == FIXTURE.read_text()


def test_load_zip_archive_equals_plain_file(tmp_path):
    write_zip(tmp_path / "text8.zip", FIXTURE.read_bytes())
    ids = t8.load_text8(tmp_path, download=False)
    assert t8.decode(ids) == FIXTURE.read_text()


def test_plain_file_takes_precedence_over_zip(tmp_path):
    (tmp_path / "text8").write_text(" abc abc")
    write_zip(tmp_path / "text8.zip", b" zzz zzz")
    assert t8.decode(t8.load_text8(tmp_path)) == " abc abc"


def test_character_outside_alphabet_is_reported_with_offset(tmp_path):
    (tmp_path / "text8").write_text(" hello World")
    with pytest.raises(DataError, match=r"offset 7 .*to_text8_alphabet"):
        t8.load_text8(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "text8.zip").write_bytes(b"not a zip"), "not a zip archive"),
        (lambda p: write_zip(p / "text8.zip", b" abc", member="other"), "member 'text8'"),
        (lambda p: (p / "text8").write_text(" "), "at least 2 characters"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        t8.load_text8(tmp_path, download=False)


def _damaged_zip(path, at):
    """A ``text8.zip`` with one byte of its compressed data flipped."""
    write_zip(path, b" anarchism originated as a term of abuse" * 100)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("at", [40, 61, 104])  # a broken stream, a CRC, a version field
def test_a_damaged_archive_is_a_clear_error(tmp_path, at):
    """A download cut or corrupted on the way: one line naming the archive, not a zlib error."""
    _damaged_zip(tmp_path / "text8.zip", at)
    with pytest.raises(
        DataError, match=r"text8\.zip: cannot read the zip archive \(.*\); delete it"
    ):
        t8.load_text8(tmp_path, download=False)


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError, match=r"neither .*text8.* nor .*text8\.zip"):
        t8.load_text8(tmp_path, download=False)


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        t8.load_text8(tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert t8.TEXT8_URL in message and "name resolution" in message and "--data-dir" in message
    assert not (tmp_path / "data").exists()  # no partial file, nor the folder made for it


def test_data_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    """A --data-dir that is a file is refused naming it, not with ``[Errno 17] File exists``."""
    (tmp_path / "text8.txt").write_text("not a folder")
    with pytest.raises(DataError, match=r"text8\.txt is a file, not a directory \(--data-dir\)"):
        t8.load_text8(tmp_path / "text8.txt")


def test_download_cut_short_fails_with_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    class Cut(io.BytesIO):  # the connection drops before Content-Length bytes arrived
        def read(self, *args):
            raise http.client.IncompleteRead(b"PK", 31344016)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut())
    with pytest.raises(DataError, match=r"downloading .*text8\.zip failed \(IncompleteRead"):
        t8.load_text8(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_download_stopped_by_ctrl_c_leaves_no_partial_file(tmp_path, monkeypatch):
    class Interrupted(io.BytesIO):  # Ctrl-C part-way through the 31 MB download
        def read(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        t8.load_text8(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_failed_download_leaves_no_folder_behind(tmp_path):
    """A --data-dir that is not there (a typo, say) stays absent when the download fails (the
    tests are offline): the folders made for the download are removed, the others kept."""
    with pytest.raises(DataError):
        t8.load_text8(tmp_path / "typo" / "text8")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError):
        t8.load_text8(tmp_path / "mine")
    assert list((tmp_path / "mine").iterdir()) == []


def test_download_saves_the_archive(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("text8", FIXTURE.read_bytes())
    payload = buffer.getvalue()
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ids = t8.load_text8(tmp_path)
    assert urls == [t8.TEXT8_URL]
    assert (tmp_path / "text8.zip").read_bytes() == payload
    assert t8.decode(ids) == FIXTURE.read_text()
    t8.load_text8(tmp_path)  # second time: read from disk
    assert len(urls) == 1


def test_default_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PLMU_DATA_DIR", str(tmp_path))
    assert t8.default_data_dir() == tmp_path / "text8"


def test_standard_split_is_90m_5m_5m():
    ids = np.empty(100_000_000, dtype=np.uint8)
    parts = t8.split(ids)
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [90_000_000, 5_000_000, 5_000_000]


@given(st.integers(min_value=2, max_value=5000))
def test_split_is_by_position_and_covers_everything(n):
    ids = np.arange(n) % 27
    parts = t8.split(ids)
    assert len(parts["train"]) == int(0.9 * n) and len(parts["valid"]) == int(0.05 * n)
    assert np.array_equal(np.concatenate([parts["train"], parts["valid"], parts["test"]]), ids)


def test_char_windows_are_shifted_by_one():
    ids = np.arange(100) % 27
    windows = t8.CharWindows(ids, seq_len=10)
    assert len(windows) == 9
    x, y = windows[3]
    assert x.dtype == torch.long and x.shape == y.shape == (10,)
    assert torch.equal(x, torch.as_tensor(ids[30:40]))
    assert torch.equal(y, torch.as_tensor(ids[31:41]))
    with pytest.raises(IndexError):
        windows[9]


def test_char_windows_reject_too_short_split():
    with pytest.raises(ValueError, match="too short for seq_len=10"):
        t8.CharWindows(np.zeros(10, dtype=np.uint8), seq_len=10)


@settings(max_examples=200)
@given(
    n=st.integers(min_value=2, max_value=400),
    seq_len=st.integers(min_value=1, max_value=64),
    context=st.integers(min_value=0, max_value=80),
)
def test_scored_windows_score_every_target_once_with_context(n, seq_len, context):
    ids = torch.arange(n)  # the value is the position
    windows = t8.ScoredWindows(ids, seq_len, context)
    effective_context = windows.context
    assert effective_context == min(context, windows.seq_len - 1)
    scored = []
    for i in range(len(windows)):
        x, y, mask = windows[i]
        assert x.shape == y.shape == mask.shape == (windows.seq_len,)
        assert torch.equal(y, x + 1)
        for j in torch.nonzero(mask).flatten().tolist():
            # target position y[j]; history inside the window: x[0..j]
            if int(x[0]) > 0:
                assert j >= effective_context
            scored.append(int(y[j]))
    assert sorted(scored) == list(range(1, n))


def test_scored_windows_on_a_long_split_use_the_full_context():
    windows = t8.ScoredWindows(np.zeros(1000, dtype=np.uint8), seq_len=100, context=40)
    assert windows.starts[:3] == [0, 60, 120]
    assert windows.first_scored[:3] == [0, 40, 40]


def test_unzipped_into_a_folder_of_its_own(tmp_path):
    """`unzip text8.zip -d text8` (or a browser's extraction) leaves DATA_DIR/text8/text8."""
    (tmp_path / "text8").mkdir()
    (tmp_path / "text8" / "text8").write_bytes(FIXTURE.read_bytes())
    assert t8.locate_text8(tmp_path, download=False) == tmp_path / "text8" / "text8"
    assert t8.decode(t8.load_text8(tmp_path, download=False)) == FIXTURE.read_text()


def test_download_that_is_not_a_zip_is_not_kept(tmp_path, monkeypatch):
    """A captive portal's HTML page saved as text8.zip would break every later run."""
    monkeypatch.setattr(
        t8.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>login</html>")
    )
    with pytest.raises(DataError, match="not a zip archive"):
        t8.load_text8(tmp_path)
    assert list(tmp_path.iterdir()) == []
