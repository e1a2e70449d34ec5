"""Answer files: JSONL records in the reference's format, read strictly and appended durably.

One record per question::

    {"question_id", "answer_id", "model_id", "tstamp",
     "choices": [{"index", "turns": [text], "idxs": [int], "new_tokens": [int], "wall_time": [s],
                  "accept_lengths": [[int, ...]]  # optional: accepted draft tokens per verification step}],
     "meta": {"idxs": "target_forwards", ...}}   # written by this package only

In files written here ``idxs`` is the number of target forwards of the turn (prefill included, counted from 1) and
``meta`` records the settings. Files without ``meta.idxs`` are taken to be the reference's, whose ``idxs`` is the
0-based index of the last decoding step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TURN_FIELDS = ("turns", "idxs", "new_tokens", "wall_time")
FORWARDS_COUNTING = "target_forwards"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_records(path: str | os.PathLike, repair_tail: bool = False, check=None) -> list[tuple[int, dict]]:
    """``(line number, record)`` for every record of an answer file (or, with ``check(record, path, line)``, of
    another JSONL file whose records that function validates).

    A last line that is not valid JSON and has no trailing newline is what a killed writer leaves behind: it is
    dropped with a warning (and, with ``repair_tail``, cut from the file so appends continue cleanly). Any other
    malformed line raises ValueError naming the file and line.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_tail = number == len(lines)  # the text after the last newline ("" for a well-formed file)
        if raw.strip():
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if not is_tail:
                    raise ValueError(f"{path}:{number}: malformed JSON line ({exc})") from None
                _warn(f"{path}:{number}: dropping a truncated last line ({len(raw)} bytes), left by an interrupted run")
                if repair_tail:
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                        os.fsync(f.fileno())
                break
            (check or _check_record)(record, path, number)
            records.append((number, record))
        offset += len(raw) + 1
    return records


def _check_record(record, path: Path, number: int) -> None:
    where = f"{path}:{number}"
    if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("choices"), list):
        raise ValueError(f"{where}: an answer record needs 'question_id' and a list of 'choices'")
    for choice in record["choices"]:
        if not isinstance(choice, dict):
            raise ValueError(f"{where}: each choice must be an object")
        missing = [name for name in TURN_FIELDS if not isinstance(choice.get(name), list)]
        if missing:
            raise ValueError(f"{where}: choice {choice.get('index', '?')} lacks list field(s) {', '.join(missing)}")
        lengths = {len(choice[name]) for name in TURN_FIELDS}
        if len(lengths) != 1:
            raise ValueError(f"{where}: choice {choice.get('index', '?')} has per-turn lists of different lengths "
                             f"({', '.join(f'{name}={len(choice[name])}' for name in TURN_FIELDS)})")


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one record as a single line, flushed and fsynced, so a killed run loses at most that line."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a+b") as f:
        if f.tell() > 0:  # a hand-written file may lack the final newline
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
