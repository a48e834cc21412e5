"""The fingerprint of the board ``deploy_bench`` measures on (see :mod:`rkpipe.hostinfo`).

For ``board=local`` the board is this host: its fingerprint names the host's and the
benchmark's thread count. A remote board is read through its transport in three commands,
before anything is pushed: SoC, NPU driver, the runtime library's sha256 (it identifies the
exact ``librkllmrt.so``; preflight reads its version string at deploy time), CPU cores and
flags, total memory, the clocks (CPU policies, NPU, DDR) with their governors, and the
board's Python and onnxruntime versions (its onnxruntime runs the ORT variants).

Clocks are recorded as the benchmark will run them: with ``board.pin_frequency`` every clock
is pinned at its maximum, so the fingerprint says so rather than reading the governor the
board had before pinning (which would change the fingerprint after the first run). A clock
under a scaling governor (ondemand, schedutil ...) is recorded by governor and range, not by
its momentary frequency.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rkpipe.board.clocks import CPU_DIR, DDR_TARGET, NPU_TARGETS
from rkpipe.board.preflight import DRIVER_FILES, parse_driver_version, soc_from_compatible
from rkpipe.board.transport import Transport, make_transport
from rkpipe.config.platforms import normalise_name
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError
from rkpipe.hostinfo import SCHEMA, memory_total_gb, parse_cpuinfo

log = logging.getLogger(__name__)

FIXED_GOVERNORS = ("userspace", "performance", "powersave")
# $1 board root, $2 runtime library, then files to read; prints "path\0content\0" for each
# readable file (path without the root; NULs inside a file, as in the device tree's
# compatible, become newlines), and "lib\0<sha256>\0" for the library.
_READ_SCRIPT = (
    'root=$1; lib=$2; shift 2; for f in "$@" "$root"' + CPU_DIR + "/cpufreq/policy[0-9]*/"
    'scaling_governor "$root"' + CPU_DIR + "/cpufreq/policy[0-9]*/scaling_cur_freq "
    '"$root"' + CPU_DIR + "/cpufreq/policy[0-9]*/scaling_available_frequencies; do "
    '[ -r "$f" ] && printf "%s\\0%s\\0" "${f#"$root"}" "$(tr "\\000" "\\n" < "$f" 2>/dev/null)"; '
    "done; "
    '[ -r "$lib" ] && printf "lib\\0%s\\0" "$(sha256sum "$lib" 2>/dev/null | cut -d" " -f1)"; true'
)


def local_board_fingerprint(
    board: BoardConfig, host: Mapping[str, Any], threads: int
) -> dict[str, Any]:
    """``board=local``: the benchmark runs on ``host`` (its fingerprint: the id names the machine,
    the versions the runtimes that will run the benchmark)."""
    return {"schema": SCHEMA, "kind": "board", "board": board.name, "transport": "local",
            "host_id": host["id"], "versions": dict(host.get("versions") or {}),
            "threads": threads}  # fmt: skip


def _pairs(text: str) -> dict[str, str]:
    parts = text.split("\0")
    return dict(zip(parts[0:-1:2], parts[1::2], strict=False))


def _clock(readings: dict[str, str], governor: str | None, cur: str, available: str,
           pinned: bool) -> dict[str, Any] | None:  # fmt: skip
    freqs = [int(f) for f in readings.get(available, "").split() if f.isdigit()]
    if not freqs and cur not in readings:
        return None
    if pinned:
        return {"governor": "userspace (pinned by rkpipe)", "freq": max(freqs) if freqs else None}
    gov = readings.get(governor or "", "").strip() or "none"
    if gov in FIXED_GOVERNORS or not freqs:
        return {"governor": gov, "freq": readings.get(cur, "").strip() or None}
    return {"governor": gov, "range": [min(freqs), max(freqs)]}


def board_clocks(readings: dict[str, str], soc: str | None, pinned: bool) -> dict[str, Any]:
    """Each clock's governor and frequency (or range) as the benchmark will see it (pure)."""
    clocks: dict[str, Any] = {}
    policies = sorted({p.rsplit("/", 1)[0] for p in readings if "/cpufreq/policy" in p})
    for policy in policies:
        clock = _clock(readings, f"{policy}/scaling_governor", f"{policy}/scaling_cur_freq",
                       f"{policy}/scaling_available_frequencies", pinned)  # fmt: skip
        if clock:
            clocks["cpu_" + policy.rsplit("/", 1)[1]] = clock
    for name, target in (("npu", NPU_TARGETS.get(soc or "")), ("ddr", DDR_TARGET)):
        if target is None:
            continue
        base = target.available.rsplit("/", 1)[0]
        clock = _clock(readings, target.governor, f"{base}/cur_freq", target.available, pinned)
        if clock:
            clocks[name] = clock
    return clocks


def _devfreq_files(soc: str | None) -> list[str]:
    files = []
    for target in (NPU_TARGETS.get(soc or ""), DDR_TARGET):
        if target:
            base = target.available.rsplit("/", 1)[0]
            files += [target.available, f"{base}/cur_freq"]
            files += [target.governor] if target.governor else []
    return files


def remote_board_fingerprint(
    board: BoardConfig, transport: Transport, threads: int
) -> dict[str, Any]:
    """Read a remote board's fingerprint in three commands (see the module docstring).

    Raises:
        BoardError: the board cannot be reached, or it answers no SoC and no CPU facts.
    """
    root = board.root.rstrip("/")
    timeout = min(board.timeout_s, 120.0)
    base_files = ["/proc/device-tree/compatible", "/proc/cpuinfo", "/proc/meminfo", *DRIVER_FILES]
    first = _read(transport, root, board.rkllm_lib, base_files, timeout)
    compatible = first.get("/proc/device-tree/compatible", "").replace("\n", "\0")
    # the SoC as deploy_bench resolves it: the device tree, else the board config's platform
    soc = soc_from_compatible(compatible) or (board.platform and normalise_name(board.platform))
    readings = first | _read(transport, root, board.rkllm_lib, _devfreq_files(soc), timeout)
    if not soc and not first.get("/proc/cpuinfo"):
        raise BoardError(
            f"board {board.name} ({board.host}) answered no fingerprint: neither "
            f"{root}/proc/device-tree/compatible nor {root}/proc/cpuinfo is readable there"
        )
    cpuinfo = readings.get("/proc/cpuinfo", "")
    driver = next(
        (parse_driver_version(readings[f]) for f in DRIVER_FILES if readings.get(f)), None
    )
    return {
        "schema": SCHEMA, "kind": "board", "board": board.name, "transport": board.transport,
        "soc": soc, "npu_driver": driver,
        "runtime_lib": {"path": board.rkllm_lib, "sha256": readings.get("lib", "missing")},
        "cpu": parse_cpuinfo(cpuinfo, "x86_64" if "\nflags" in cpuinfo else "aarch64"),
        "memory_total_gb": memory_total_gb(readings.get("/proc/meminfo", "")),
        # pinned only where deploy_bench can pin: an SoC with a Rockchip fix_freq table
        "clocks": board_clocks(readings, soc, board.pin_frequency and soc in NPU_TARGETS),
        "versions": _board_versions(transport, board, timeout),
        "threads": threads,
    }  # fmt: skip


# Prints "python\0<version>\0onnxruntime\0<version or 'not installed'>\0".
_VERSIONS_SCRIPT = (
    "import importlib.metadata as m, platform, sys\n"
    "try:\n    ort = m.version('onnxruntime')\nexcept m.PackageNotFoundError:\n"
    "    ort = 'not installed'\n"
    "sys.stdout.write('python\\0' + platform.python_version() + '\\0onnxruntime\\0' + ort"
    " + '\\0')\n"
)


def _board_versions(transport: Transport, board: BoardConfig, timeout: float) -> dict[str, str]:
    """The board's Python and onnxruntime versions (``unknown`` when its python cannot run)."""
    try:
        result = transport.run([board.python, "-c", _VERSIONS_SCRIPT], timeout)
    except (OSError, BoardError) as exc:  # no such interpreter on a local stand-in
        log.warning("board %s: cannot run %s for its versions: %s", board.name, board.python, exc)
        return {"python": "unknown", "onnxruntime": "unknown"}
    versions = _pairs(result.stdout) if result.returncode == 0 else {}
    return {name: versions.get(name, "unknown") for name in ("python", "onnxruntime")}


def _read(
    transport: Transport, root: str, lib: str, files: list[str], timeout: float
) -> dict[str, str]:
    argv = ["sh", "-c", _READ_SCRIPT, "sh", root, lib, *(root + f for f in files)]
    result = transport.run(argv, timeout)
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-2:])
        raise BoardError(f"cannot read the board's fingerprint (exit {result.returncode}): {tail}")
    return _pairs(result.stdout)


def board_fingerprint(board: BoardConfig, host: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """The fingerprint of ``board``: local (the host) or read through its transport.

    A remote board that cannot be reached gives ``{"error": ...}`` instead of raising, so that
    the host's own stages (evaluate) still run; ``deploy_bench`` refuses such a fingerprint
    before pushing anything.
    """
    if board.transport == "local":
        return local_board_fingerprint(board, host, threads)
    try:
        transport = make_transport(board)
        try:
            return remote_board_fingerprint(board, transport, threads)
        finally:
            getattr(transport, "close", lambda: None)()  # SSH / adb connections
    except BoardError as exc:
        log.warning("board %s: %s", board.name, exc)
        return {"schema": SCHEMA, "kind": "board", "board": board.name,
                "transport": board.transport, "error": str(exc)}  # fmt: skip
