"""diffsmooth_fast.run.tsv: Cohen et al.'s certify TSV format, written and read (also the files they published)."""

from __future__ import annotations

import datetime
import errno
import os
import io
from pathlib import Path

import pytest

from diffsmooth_fast.run.tsv import (
    CERTIFY_HEADER,
    PREDICT_HEADER,
    CertifyRow,
    format_certify_row,
    parse_time,
    read_certify,
    read_numbered,
    write_certify_header,
    write_certify_row,
    write_line,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cohen-certify"
FIXTURE_FILES = sorted(p for p in FIXTURES.rglob("*") if p.is_file()) if FIXTURES.is_dir() else []
INTERRUPTED = "imagenet/resnet50/noise_0.25/test/sigma_0.25"  # a run that stopped after 427 of 500 images
TRAIN = "imagenet/resnet50/noise_0.50/train/sigma_0.50"  # train split, skip 2500: idx 0..1280000, 513 images

HEADER_LINE = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


def cohen_line(i, label, prediction, radius, correct, seconds) -> str:
    """The line Cohen et al.'s code/certify.py prints (locuslab/smoothing), written out here independently."""
    time_elapsed = str(datetime.timedelta(seconds=seconds))
    return "{}\t{}\t{}\t{:.3}\t{}\t{}".format(i, label, prediction, radius, correct, time_elapsed)


def row(idx=0, label=3, predict=3, radius=0.37812, correct=1, time=151.433809) -> CertifyRow:
    return CertifyRow(idx=idx, label=label, predict=predict, radius=radius, correct=correct, time=time)


# --------------------------------------------------------------------------------------------------------------
# format_certify_row


def test_format_known_line():
    assert format_certify_row(row()) == "0\t3\t3\t0.378\t1\t0:02:31.433809"


@pytest.mark.parametrize(
    "value,text",
    [
        (0.37812, "0.378"),
        (1.0, "1.0"),
        (0.0, "0.0"),
        (0.0125, "0.0125"),
        (0.006021, "0.00602"),
        (2.87, "2.87"),
        (1.9555, "1.96"),
        (3.9105, "3.91"),
        (12.345, "12.3"),
        (123.4, "1.23e+02"),
    ],
)
def test_format_radius_three_significant_digits(value, text):
    fields = format_certify_row(row(radius=value)).split("\t")
    assert fields[3] == text


@pytest.mark.parametrize(
    "seconds,text",
    [
        (151.433809, "0:02:31.433809"),
        (15.0, "0:00:15"),
        (14.206886, "0:00:14.206886"),
        (0.5, "0:00:00.500000"),
        (3723.25, "1:02:03.250000"),
        (90061.0, "1 day, 1:01:01"),
        (2 * 86400 + 1.5, "2 days, 0:00:01.500000"),
    ],
)
def test_format_time_is_str_timedelta(seconds, text):
    assert format_certify_row(row(time=seconds)).split("\t")[5] == text


@pytest.mark.parametrize(
    "args",
    [
        (0, 3, 3, 0.37812, 1, 151.433809),
        (20, 7, -1, 0.0, 0, 15.6),
        (100, 2, 971, 1.0, 0, 150.721351),
        (49900, 998, 987, 2.8712, 0, 150.435366),
        (1280000, 999, 999, 1.9571, 1, 89.5),
    ],
)
def test_format_matches_cohen(args):
    assert format_certify_row(CertifyRow(*args)) == cohen_line(*args)


def test_format_has_no_newline_and_six_fields():
    line = format_certify_row(row())
    assert "\n" not in line
    assert len(line.split("\t")) == len(CERTIFY_HEADER) == 6


# --------------------------------------------------------------------------------------------------------------
# parse_time


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("0:02:31.433809", 151.433809),
        ("0:00:15", 15.0),
        ("15.4", 15.4),
        ("16", 16.0),
        ("1 day, 0:00:01", 86401.0),
        ("2 days, 1:00:00.5", 2 * 86400 + 3600.5),
        ("10:00:00", 36000.0),
    ],
)
def test_parse_time(text, seconds):
    assert parse_time(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("seconds", [0.0, 0.000001, 13.736080, 151.433809, 3599.999999, 86400.0, 90061.25])
def test_parse_time_inverts_str_timedelta(seconds):
    assert parse_time(str(datetime.timedelta(seconds=seconds))) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("text", ["", "abc", "1:2:3", "0:02:31.4x", "one day, 0:00:01", "15,4", "0:02"])
def test_parse_time_rejects_garbage(text):
    with pytest.raises(ValueError, match="time"):
        parse_time(text)


# --------------------------------------------------------------------------------------------------------------
# write then read

ROWS = [
    row(0, 3, 3, 0.37812, 1, 151.433809),
    row(20, 7, -1, 0.0, 0, 15.6),
    row(40, 8, 1, 0.0125, 0, 14.2),
    row(60, 0, 0, 1.0, 1, 0.25),
    row(80, 5, 5, 2.87349, 1, 90061.5),
]


def test_round_trip_through_file(tmp_path):
    path = tmp_path / "certify.tsv"
    with open(path, "w", encoding="utf-8") as f:
        write_certify_header(f)
        for r in ROWS:
            write_certify_row(f, r)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == HEADER_LINE
    assert text.endswith("\n")
    back = read_certify(path)
    assert len(back) == len(ROWS)
    for written, read in zip(ROWS, back):
        assert (read.idx, read.label, read.predict, read.correct) == (
            written.idx,
            written.label,
            written.predict,
            written.correct,
        )
        assert read.radius == float(f"{written.radius:.3}")
        assert read.time == pytest.approx(written.time, abs=1e-6)
    assert [r.radius for r in back] == [0.378, 0.0, 0.0125, 1.0, 2.87]
    # what was read writes back to the same text
    assert [format_certify_row(r) for r in back] == text.splitlines()[1:]


def test_rows_are_flushed_as_written(tmp_path):
    path = tmp_path / "certify.tsv"
    with open(path, "w", encoding="utf-8") as f:
        write_certify_header(f)
        write_certify_row(f, ROWS[0])
        # still open: a reader (or a killed run) sees the row already
        assert [r.idx for r in read_certify(path)] == [0]
        write_certify_row(f, ROWS[1], sync=False)
        assert [r.idx for r in read_certify(path)] == [0, 20]


def test_write_to_memory_stream():
    buffer = io.StringIO()
    write_certify_header(buffer)
    write_certify_row(buffer, ROWS[0])  # sync on a stream without a file descriptor must not fail
    assert buffer.getvalue() == HEADER_LINE + "\n" + "0\t3\t3\t0.378\t1\t0:02:31.433809\n"


def test_read_accepts_float_seconds_and_blank_lines(tmp_path):
    path = tmp_path / "old.tsv"
    path.write_text(HEADER_LINE + "\n0\t3\t3\t0.378\t1\t15.4\n\n20\t7\t-1\t0.0\t0\t15.6\n\n", encoding="utf-8")
    back = read_certify(path)
    assert [(r.idx, r.predict, r.time) for r in back] == [(0, 3, pytest.approx(15.4)), (20, -1, pytest.approx(15.6))]


def test_read_header_only_is_empty(tmp_path):
    path = tmp_path / "empty_run.tsv"
    path.write_text(HEADER_LINE + "\n", encoding="utf-8")
    assert read_certify(path) == []


# --------------------------------------------------------------------------------------------------------------
# read errors


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.tsv"
    with pytest.raises(ValueError, match=r"nope\.tsv.*no such"):
        read_certify(path)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "idx label predict radius correct time\n0\t3\t3\t0.378\t1\t15.4\n",  # spaces, not tabs
        "\t".join(PREDICT_HEADER) + "\n0\t3\t3\t1\t15.4\n",  # a predict file
        "0\t3\t3\t0.378\t1\t15.4\n",  # no header
        "idx\tlabel\tpredict\tradius\tcorrect\n",
    ],
)
def test_read_wrong_header(tmp_path, content):
    path = tmp_path / "bad_header.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_header\.tsv.*not a certify file"):
        read_certify(path)


@pytest.mark.parametrize(
    "bad_line,fields",
    [("20\t7\t7\t0.0829\t1", 5), ("20\t7\t7\t0.0829\t1\t15.4\textra", 7), ("20 7 7 0.0829 1 15.4", 1)],
)
def test_read_wrong_field_count_names_file_and_line(tmp_path, bad_line, fields):
    path = tmp_path / "fields.tsv"
    path.write_text(HEADER_LINE + "\n0\t3\t3\t0.378\t1\t15.4\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"fields\.tsv:3: expected 6 tab-separated fields, got {fields}"):
        read_certify(path)


@pytest.mark.parametrize(
    "bad_line",
    [
        "x\t7\t7\t0.0829\t1\t15.4",  # idx
        "2.5\t7\t7\t0.0829\t1\t15.4",  # idx not an integer
        "20\t7\tcat\t0.0829\t1\t15.4",  # predict
        "20\t7\t7\tbig\t1\t15.4",  # radius
        "20\t7\t7\t0.0829\tyes\t15.4",  # correct
        "20\t7\t7\t0.0829\t1\tlater",  # time
    ],
)
def test_read_bad_value_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "values.tsv"
    # the blank line still counts: the bad row is on line 4 of the file
    path.write_text(HEADER_LINE + "\n0\t3\t3\t0.378\t1\t15.4\n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"values\.tsv:4: "):
        read_certify(path)


def test_read_second_header_says_so(tmp_path):
    """Two files joined with cat: the second header is named as such, not as a bad idx."""
    path = tmp_path / "joined.tsv"
    body = HEADER_LINE + "\n0\t3\t3\t0.378\t1\t15.4\n"
    path.write_text(body + body, encoding="utf-8")
    with pytest.raises(ValueError, match=r"joined\.tsv:3: a second header line \(files joined with cat\?\)"):
        read_certify(path)


def test_read_numbered_collects_problems_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "mixed.tsv"
    path.write_text(HEADER_LINE + "\n0\t3\t3\t0.378\t1\t15.4\n\n" + HEADER_LINE + "\n1\t2\t2\t0.5\t1\n"
                    "2\t2\tx\t0.5\t1\t1.0\n3\t2\t2\t0.5\t1\t1.0\n4\t2\t2", encoding="utf-8")
    problems = []
    header, rows = read_numbered(path, torn_tail=True, problems=problems)
    assert header == CERTIFY_HEADER and [(line, row.idx) for line, row in rows] == [(2, 0), (7, 3)]
    assert [line for line, _ in problems] == [4, 5, 6]  # the torn last line (8) is no problem
    assert "second header" in problems[0][1] and "got 5" in problems[1][1] and "'x'" in problems[2][1]
    _, predict = read_numbered(_write(tmp_path / "p.tsv", "\t".join(PREDICT_HEADER) + "\n0\t1\t1\t1\t2.0\n"))
    assert predict[0][1].correct == 1 and predict[0][0] == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------
# Cohen et al.'s published certify files


def _fixture_params():
    if not FIXTURE_FILES:
        return [pytest.param(None, id="fixtures-absent")]
    return [pytest.param(p, id=str(p.relative_to(FIXTURES))) for p in FIXTURE_FILES]


@pytest.fixture(params=_fixture_params())
def fixture_file(request) -> Path:
    if request.param is None:
        pytest.skip(f"{FIXTURES} is absent (../shared is not part of a clone)")
    return request.param


def test_fixture_dir_has_the_published_runs():
    if not FIXTURE_FILES:
        pytest.skip(f"{FIXTURES} is absent")
    names = {str(p.relative_to(FIXTURES)) for p in FIXTURE_FILES}
    assert INTERRUPTED in names and TRAIN in names
    assert len(names) == 13


def test_fixture_parses_with_invariants(fixture_file):
    relative = str(fixture_file.relative_to(FIXTURES))
    rows = read_certify(fixture_file)
    expected = {INTERRUPTED: 427, TRAIN: 513}.get(relative, 500)
    assert len(rows) == expected
    idx = [r.idx for r in rows]
    assert idx[0] == 0
    assert all(a < b for a, b in zip(idx, idx[1:]))
    for r in rows:
        if r.predict == -1:
            assert r.radius == 0.0 and r.correct == 0, r
        else:
            assert r.radius >= 0.0, r
            assert r.correct == int(r.predict == r.label), r
        assert r.time > 0.0


def test_fixture_lines_reformat_exactly(fixture_file):
    """Every radius field of the published files is reproduced exactly; so is the time where it is a timedelta."""
    lines = fixture_file.read_text(encoding="utf-8").splitlines()
    rows = read_certify(fixture_file)
    data = [line for line in lines[1:] if line.strip()]
    assert len(data) == len(rows)
    for line, r in zip(data, rows):
        ours = format_certify_row(r).split("\t")
        theirs = line.split("\t")
        assert ours[:5] == theirs[:5], line
        if ":" in theirs[5]:  # newer files: str(timedelta); older ones hold float seconds
            assert ours[5] == theirs[5], line


def test_read_certify_rejects_directories_and_binary(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        read_certify(tmp_path)
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"\xff\xfe\x00idx")
    with pytest.raises(ValueError, match="binary.tsv: not a text file"):
        read_certify(binary)


@pytest.mark.parametrize("text", ["nan", "inf", "-1.5"])
def test_parse_time_rejects_non_finite_and_negative(text):
    with pytest.raises(ValueError, match="finite, non-negative"):
        parse_time(text)


@pytest.mark.parametrize("code,raised", [(errno.ENOSPC, True), (errno.EIO, True), (errno.EINVAL, False)])
def test_a_failed_fsync_is_a_failed_write_but_a_pipe_is_fine(tmp_path, monkeypatch, code, raised):
    """A full disk on NFS or with delayed allocation shows only at fsync: the row may not be on disk, so it must
    not pass silently; EINVAL is what a pipe or terminal answers, and a row there is fine."""
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)
    with open(tmp_path / "x.tsv", "w") as f:
        if raised:
            with pytest.raises(OSError) as info:
                write_line(f, "a")
            assert info.value.errno == code
        else:
            write_line(f, "a")
    write_line(io.StringIO(), "a")  # an in-memory buffer has no file to sync
