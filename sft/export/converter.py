"""llama.cpp's own converter, convert_hf_to_gguf.py, taken from a pinned llama.cpp source.

The converter is not on PyPI by itself. The source archive of llama-cpp-python, the Python binding of
llama.cpp (pinned in requirements-dev.txt, where the tests build it), vendors llama.cpp at a fixed
commit, converter included. The first export takes from that archive the converter, its `conversion`
package, the `gguf-py` it is written against and llama.cpp's licence (2 MB) into the project's cache;
later exports run them from there. The archive comes from PyPI through pip (76.6 MB, once), or from
--llama-cpp-source on a machine without internet, and must be the pinned file (its sha256 is checked).
"""

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sft.errors import UserError
from sft.offline_kit import cache_dir

LLAMA_CPP_PYTHON = "0.3.36"  # as in requirements-dev.txt: the converter and the tests' runtime from one source
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # PyPI's file
_VENDORED = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
_TAKEN = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")  # what the converter needs, and its licence
_READY = "extracted.ok"
CONVERTER_TYPES = ("f16", "q8_0")  # of the converter's --outtype values, those offered here


# --- the converter, once per machine -------------------------------------------------------------
def converter_dir(source: str = "") -> Path:
    """The folder holding convert_hf_to_gguf.py, taken once from the pinned source archive (`source`, or PyPI's)."""
    target = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (target / _READY).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # two exports at once: one extracts, the other waits
        if not (target / _READY).exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as downloads:
                extract(Path(source).expanduser() if source else download(Path(downloads)), target)
    return target


def download(folder: Path) -> Path:
    """llama-cpp-python's source archive from PyPI, through pip: the source, never a prebuilt wheel."""
    print(f"Downloading llama.cpp's converter once: the source of llama-cpp-python {LLAMA_CPP_PYTHON} from PyPI "
          "(76.6 MB)...", flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                             "--no-deps", "--no-binary", ":all:", "--dest", str(folder), "--quiet"],
                            capture_output=True, text=True)
    if result.returncode != 0 or not (folder / SDIST).is_file():
        said = (result.stderr.strip().splitlines() or ["nothing"])[-1]
        raise UserError(f"could not download llama.cpp's converter from PyPI (pip said: {said}). Without internet: "
                        f"on a machine with it, run pip download llama-cpp-python=={LLAMA_CPP_PYTHON} --no-deps "
                        f"--no-binary :all: and pass the file it writes, {SDIST}, as --llama-cpp-source")
    return folder / SDIST


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract(archive: Path, target: Path) -> None:
    """Check that `archive` is the pinned file, then take the converter's files from it into `target`, all at once."""
    if not archive.is_file():
        raise UserError(f"--llama-cpp-source: no file {archive}")
    if sha256(archive) != SDIST_SHA256:
        raise UserError(f"{archive} is not PyPI's {SDIST} (its sha256 differs): pass the file that pip download "
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON} --no-deps --no-binary :all: writes")
    started, staging = time.time(), target.with_name(f".{target.name}.incomplete-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            members = [member for member in tar.getmembers() if member.name.startswith(_VENDORED)
                       and member.name[len(_VENDORED):].startswith(_TAKEN)]
            for member in members:
                member.name = member.name[len(_VENDORED):]
            tar.extractall(staging, members=members, filter="data")  # plain files only, nothing outside staging
        (staging / _READY).write_text(f"from {SDIST}, sha256 {SDIST_SHA256}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"llama.cpp's converter is ready in {target} ({time.time() - started:.0f} s).", flush=True)


# --- what it converts, and running it ------------------------------------------------------------
def supported_architectures(converter: Path) -> set[str]:
    """The architectures (config.json's "architectures") the converter writes as GGUF language models: the
    keys of its TEXT_MODEL_MAP, read from its source rather than imported (that would load torch here)."""
    tree = ast.parse((converter / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(getattr(target, "id", "") == "TEXT_MODEL_MAP" for target in targets):
            return set(ast.literal_eval(node.value))
    raise UserError(f"{converter} has no TEXT_MODEL_MAP: delete that folder, and the next export extracts it again")


def convert(converter: Path, model_dir: Path, outfile: Path, gguf_type: str) -> None:
    """Run convert_hf_to_gguf.py as its own process, with the gguf-py it was written against first on the path;
    its output is shown only if it fails."""
    path = os.pathsep.join(filter(None, [str(converter / "gguf-py"), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model_dir),
                             "--outfile", str(outfile), "--outtype", gguf_type],
                            env={**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        print("\n".join(lines[-15:]), file=sys.stderr)
        raise UserError(f"llama.cpp's converter could not convert {model_dir}: {lines[-1] if lines else 'no output'}")
