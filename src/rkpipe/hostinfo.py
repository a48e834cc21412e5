"""Where a figure was measured: the fingerprint of this host, and provenance for metrics.

The same model file gives different numbers on different CPUs: onnxruntime's int8 kernels
pick their code path from the CPU's ISA (AVX2, AVX-512 VNNI, AVX-VNNI, AMX; NEON dot product
and i8mm on Arm), and one of them saturates u8 x s8 products where VNNI is missing. So every
measuring stage depends on a fingerprint of the machine that measured:

* :func:`host_fingerprint` collects the facts that change results (CPU model and the kernel
  flags, logical cores, threads, total memory, the runtimes' versions), and nothing that
  changes from run to run (no timestamps, no load, no free memory);
* :func:`write_fingerprint` writes it as canonical JSON (sorted keys), so its bytes, and DVC's
  hash of it, change only when the machine, its runtimes or the thread count do;
* :func:`provenance` is what each metrics file, MLflow run and report row carries: the
  fingerprint id, the CPU, the board and the time of the measurement.

``RKPIPE_CPUINFO`` names a file to read instead of ``/proc/cpuinfo`` (a test, or the facts
of another machine).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rkpipe.errors import RkpipeError

SCHEMA = 1
CPUINFO_ENV = "RKPIPE_CPUINFO"
# x86 flags whose presence changes which onnxruntime / llama.cpp kernel runs.
X86_KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                    "avx512_fp16", "avx_vnni")  # fmt: skip
X86_FLAG_PREFIXES = ("amx_",)
# Arm /proc/cpuinfo "Features" names -> the names people use for them.
ARM_KERNEL_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16",
                    "sve": "sve", "bf16": "bf16"}  # fmt: skip
# Arm "CPU part" ids of the cores in Rockchip SoCs (and a few neighbours).
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
             "0xd09": "Cortex-A73", "0xd0b": "Cortex-A76", "0xd41": "Cortex-A78"}  # fmt: skip
# Runtimes whose version changes a measured figure.
VERSION_PACKAGES = {"onnxruntime": "onnxruntime", "llama_cpp": "llama_cpp_python",
                    "numpy": "numpy"}  # fmt: skip


class FingerprintError(RkpipeError):
    """A fingerprint file is missing or unreadable, or a board answered none."""


def parse_cpuinfo(text: str, machine: str) -> dict[str, Any]:
    """CPU model and kernel-relevant ISA flags from ``/proc/cpuinfo`` text (pure).

    x86: ``model name`` and the ``flags`` of :data:`X86_KERNEL_FLAGS` plus every ``amx_*``.
    Arm: the core types from ``CPU part`` (a big.LITTLE SoC lists both) and ``Features``
    mapped to neon / dotprod / i8mm ... .
    """
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if machine in ("x86_64", "AMD64", "i686") or "flags" in fields:
        flags = set((fields.get("flags") or [""])[0].split())
        isa = [f for f in X86_KERNEL_FLAGS if f in flags]
        isa += sorted(f for f in flags if f.startswith(X86_FLAG_PREFIXES))
        model = (fields.get("model name") or ["unknown x86"])[0]
    else:
        features = set((fields.get("features") or [""])[0].split())
        isa = sorted(name for flag, name in ARM_KERNEL_FLAGS.items() if flag in features)
        parts = sorted({ARM_PARTS.get(p.lower(), f"part {p}") for p in fields.get("cpu part", [])})
        model = " + ".join(parts) or (fields.get("hardware") or ["unknown arm"])[0]
    return {"model": re.sub(r"\s+", " ", model), "arch": machine, "isa": sorted(isa)}


def _cpuinfo_text() -> str:
    path = Path(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FingerprintError(f"cannot read the CPU facts from {path}: {exc}") from None


def memory_total_gb(meminfo: str) -> float | None:
    """``MemTotal`` in GiB, rounded to 0.5 (the kernel's figure moves by a few MB between boots)."""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return None if match is None else round(int(match.group(1)) / 2**20 * 2) / 2


def runtime_versions() -> dict[str, str]:
    """Versions of the runtimes that compute the figures (``not installed`` when absent)."""
    versions = {"python": platform.python_version()}
    for name, dist in VERSION_PACKAGES.items():
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def usable_cores() -> int:
    """The logical cores this process may run on (CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 0


def host_fingerprint(threads: int) -> dict[str, Any]:
    """The facts of this host that change a measurement (see the module docstring)."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        meminfo = ""
    cpu = parse_cpuinfo(_cpuinfo_text(), platform.machine())
    return {
        "schema": SCHEMA,
        "kind": "host",
        "cpu": cpu | {"logical_cores": usable_cores()},
        "memory_total_gb": memory_total_gb(meminfo),
        "threads": threads,
        "versions": runtime_versions(),
    }


def fingerprint_id(facts: Mapping[str, Any]) -> str:
    """A short stable id of the machine a fingerprint describes: sha256 of its canonical JSON
    without ``threads`` (a setting of the run: two thread counts on one machine are comparable,
    that is what a threads sweep compares) and without ``versions`` (an upgraded onnxruntime
    reruns the measuring stages, because the file's bytes change, but the machine is the same;
    ``rkpipe reproduce`` reports version changes on their own)."""
    body = {k: v for k, v in facts.items() if k not in ("id", "threads", "versions")}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:12]


def canonical_json(data: Any) -> str:
    """Sorted keys, fixed separators, one trailing newline: equal facts give equal bytes."""
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def with_id(facts: Mapping[str, Any]) -> dict[str, Any]:
    """``facts`` with its :func:`fingerprint_id` under ``id``."""
    return {**facts, "id": fingerprint_id(facts)}


def write_fingerprint(path: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``facts`` (with its id) canonically and atomically; return what was written."""
    from rkpipe.io import write_text_atomic

    data = with_id(facts)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, canonical_json(data))
    return data


def load_fingerprint(path: Path) -> dict[str, Any]:
    """Read a fingerprint written by :func:`write_fingerprint`.

    Raises:
        FingerprintError: missing, not JSON, or without an id (one line naming the file and
            the stage that writes it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FingerprintError(
            f"{path} does not exist; run the host_fingerprint stage first (dvc repro)"
        ) from None
    except (OSError, ValueError) as exc:
        raise FingerprintError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); "
            "rerun the host_fingerprint stage (dvc repro -s host_fingerprint)"
        ) from None
    if not isinstance(data, dict) or not data.get("id"):
        raise FingerprintError(f"{path} holds no fingerprint id; rerun the host_fingerprint stage")
    return data


def describe(facts: Mapping[str, Any]) -> str:
    """``Intel(R) Xeon(R) Processor (x86_64: avx2, avx512_vnni, amx_int8 ...), 2 threads``."""
    cpu = facts.get("cpu") or {}
    isa = ", ".join(cpu.get("isa") or []) or "no kernel flags"
    return (
        f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}: {isa}), {facts.get('threads')} threads"
    )


def provenance(
    host: Mapping[str, Any],
    board: str = "host",
    board_facts: Mapping[str, Any] | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """What a metrics file says about where and when its figures were measured: this host's
    fingerprint id, the board and (for a remote board) its fingerprint id, the CPU that ran the
    measurement (the board's for a remote board) with its kernel flags, and the UTC time."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    remote = bool(board_facts and board_facts.get("cpu"))  # a local board is the host itself
    cpu = ((board_facts if remote else host) or {}).get("cpu") or {}
    return {
        "host_id": str(host.get("id", "?")),
        "board": board,
        "board_id": str(board_facts.get("id", "")) if remote and board_facts else "",
        "cpu": str(cpu.get("model", "?")),
        "isa": " ".join(cpu.get("isa") or []),
        "measured_at": now.replace(microsecond=0).isoformat(),
    }


def measuring_machine(prov: Mapping[str, Any]) -> str:
    """The id of the machine that ran a measurement: the board's, else the host's."""
    return str(prov.get("board_id") or prov.get("host_id") or "")


def provenance_here() -> dict[str, str]:
    """:func:`provenance` of this host, read now: for the figures of the building stages
    (timings of a download, a calibration, a quantization), which must not rerun on another
    machine and so do not depend on the host_fingerprint stage's file."""
    return provenance(with_id(host_fingerprint(threads=0)))


def provenance_tags(stage: str, prov: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags ``measured.<stage>.<key>`` for a stage's :func:`provenance`."""
    return {f"measured.{stage}.{key}": str(value) for key, value in prov.items()}


def has_vnni(facts: Mapping[str, Any]) -> bool:
    """Whether an x86 host multiplies u8 x s8 without the 16-bit saturation of AVX2's
    ``vpmaddubsw`` (AVX-512 VNNI, AVX-VNNI or AMX). True on non-x86 hosts."""
    cpu = facts.get("cpu") or {}
    if cpu.get("arch") not in ("x86_64", "AMD64", "i686"):
        return True
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu.get("isa") or []))


def isa_warnings(facts: Mapping[str, Any]) -> list[str]:
    """One line per missing ISA feature that costs speed or accuracy here, naming the flag
    and the consequence."""
    cpu = facts.get("cpu") or {}
    isa = set(cpu.get("isa") or [])
    warnings = []
    if cpu.get("arch") == "x86_64":
        if "avx2" not in isa:
            warnings.append(
                "no avx2: onnxruntime and llama.cpp fall back to SSE kernels; speed figures "
                "from this host are far below a current x86 CPU's"
            )
        if not has_vnni(facts):
            warnings.append(
                "no avx512_vnni/avx_vnni/amx_int8: onnxruntime's u8 x s8 int8 kernels use "
                "AVX2's saturating vpmaddubsw here; a dynamic int8 model whose weights use the "
                "full 8-bit range can lose its accuracy (quant.ort.reduce_range=auto avoids it)"
            )
    elif cpu.get("arch") == "aarch64" and "dotprod" not in isa:
        warnings.append(
            "no dotprod (asimddp): int8 matrix products run on plain NEON, several times slower"
        )
    return warnings


def host_file(data_dir: str | Path) -> Path:
    """Where the host_fingerprint stage writes this host's fingerprint."""
    return Path(data_dir) / "host" / "host.json"


def board_file(data_dir: str | Path) -> Path:
    """Where the host_fingerprint stage writes the board's fingerprint."""
    return Path(data_dir) / "host" / "board.json"
