"""Check a board before deploying a model (its clocks are pinned by :mod:`rkpipe.board.clocks`).

:func:`quick_check` is the seconds-long check that runs before any conversion (the preflight
stage): the board answers, its host key is the known one, and its SoC is ``board.platform``.

:func:`preflight` reads, through any :class:`~rkpipe.board.deploy.Transport`:

* the SoC from ``/proc/device-tree/compatible`` (NUL-separated, e.g.
  ``rockchip,rk3588-evb\\0rockchip,rk3588\\0``);
* the NPU driver version from ``/sys/kernel/debug/rknpu/version`` (``RKNPU driver: v0.9.8``;
  debugfs needs root), else ``/sys/module/rknpu/version``;
* the runtime version as the runtime itself reports it: the runner's ``--probe-version``
  calls ``rkllm_init`` on a model that does not exist, and the library prints
  ``rkllm-runtime version: X, rknpu driver version: Y, platform: Z`` before failing. This
  reads the library actually loaded (not a file name or a separate version file, which can
  disagree with it) and needs only the board's ``python3``, which the runners need anyway;
* free disk with ``df -Pk <workdir>`` and ``MemAvailable`` from ``/proc/meminfo``.

Every path is read below an optional ``board_root`` prefix, so a test board can fake them
in a directory. Problems (wrong SoC, driver < 0.9.8, runtime version != toolkit version,
too little disk or memory) are collected and raised together as one BoardError.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

from rkpipe.board.transport import Transport, make_transport
from rkpipe.config.platforms import PLATFORMS, normalise_name
from rkpipe.errors import BoardError
from rkpipe.measure.rkllm_log import parse_runtime_info, version_key

if TYPE_CHECKING:
    from rkpipe.config.schema import BoardConfig

log = logging.getLogger(__name__)

MIN_DRIVER = "0.9.8"
# RAM per MB of .rkllm file: weights + KV cache + runtime. Rockchip's benchmark.md (v1.3.0)
# reports 0.9 to 1.15 x the model size at 4k context; 1.2 leaves room for the rest of the OS.
MEMORY_FACTOR = 1.2
DISK_SLACK_MB = 64.0
DEFAULT_RUNTIME_LIB = "/usr/lib/librkllmrt.so"
SOCS = tuple(name for name in PLATFORMS if name != "host")
DRIVER_FILES = ("/sys/kernel/debug/rknpu/version", "/sys/module/rknpu/version")
COMPATIBLE_FILE = "/proc/device-tree/compatible"
QUICK_TIMEOUT_S = 10.0


def soc_from_compatible(raw: str) -> str | None:
    """The Rockchip SoC named by a device-tree ``compatible`` value, or None.

    Entries are NUL-separated and go from the board to the SoC; ``rk3588s`` counts as
    ``rk3588`` (same NPU).
    """
    for entry in reversed([e.strip() for e in raw.split("\0") if e.strip()]):
        vendor, _, model = entry.partition(",")
        model = model.lower().removesuffix("s") if vendor == "rockchip" else ""
        if model in SOCS:
            return model
    return None


def parse_driver_version(text: str) -> str | None:
    """``0.9.8`` from ``RKNPU driver: v0.9.8``; None when absent."""
    match = re.search(r"v?(\d+\.\d+\.\d+)", text)
    return match.group(1) if match else None


def parse_df_available_mb(text: str) -> float:
    """Available space (MB, 10^6 B) in the last line of ``df -Pk`` output.

    Raises:
        BoardError: not df -P output.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    fields = lines[-1].split() if len(lines) >= 2 else []
    if len(fields) < 6 or not fields[3].isdigit():
        raise BoardError(f"unexpected `df -Pk` output: {text.strip()[:200]!r}")
    return int(fields[3]) * 1024 / 1e6


def parse_mem_available_mb(meminfo: str) -> float:
    """``MemAvailable`` (MB, 10^6 B) from /proc/meminfo.

    Raises:
        BoardError: no MemAvailable line (kernel older than 3.14).
    """
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if not match:
        raise BoardError("/proc/meminfo has no MemAvailable line (kernel older than 3.14?)")
    return int(match.group(1)) * 1024 / 1e6


def _read(transport: Transport, path: str, timeout: float) -> str | None:
    result = transport.run(["cat", "--", path], timeout)
    return result.stdout if result.returncode == 0 else None


def read_soc(transport: Transport, board_root: str, timeout: float) -> tuple[str | None, str]:
    """(SoC or None, the raw compatible string with NULs shown as commas)."""
    raw = _read(transport, board_root + COMPATIBLE_FILE, timeout) or ""
    return soc_from_compatible(raw), ", ".join(e for e in raw.split("\0") if e.strip())


def read_driver_version(transport: Transport, board_root: str, timeout: float) -> str | None:
    """The RKNPU driver version, or None when no version file is readable."""
    for path in DRIVER_FILES:
        text = _read(transport, board_root + path, timeout)
        if text and parse_driver_version(text):
            return parse_driver_version(text)
    return None


def read_runtime_info(transport: Transport, runtime_lib: str, timeout: float) -> dict[str, str]:
    """What ``librkllmrt.so`` says about itself (see the module docstring); {} when it says
    nothing (library missing, or no Python on the board)."""
    argv = ["env", "RKLLM_LOG_LEVEL=1"] + transport.runner_command("rkllm_runner")
    result = transport.run(argv + ["--probe-version", "--lib", runtime_lib], timeout)
    info = parse_runtime_info(result.stdout + "\n" + result.stderr)
    if not info:
        tail = " | ".join(result.stderr.strip().splitlines()[-2:])
        log.warning("the runtime at %s reported no version: %s", runtime_lib, tail)
    return info


def read_free_disk_mb(transport: Transport, workdir: str, timeout: float) -> float:
    """Free space where ``workdir`` lives (created if missing)."""
    script = 'mkdir -p -- "$1" && df -Pk -- "$1"'
    result = transport.run(["sh", "-c", script, "sh", workdir], timeout)
    if result.returncode != 0:
        raise BoardError(
            f"cannot create or measure {workdir} on the board: {result.stderr.strip()}"
        )
    return parse_df_available_mb(result.stdout)


def read_mem_available_mb(transport: Transport, board_root: str, timeout: float) -> float:
    """``MemAvailable`` of the board in MB."""
    text = _read(transport, board_root + "/proc/meminfo", timeout)
    if text is None:
        raise BoardError("cannot read /proc/meminfo on the board")
    return parse_mem_available_mb(text)


def check_facts(
    facts: dict[str, Any],
    *,
    model_platform: str | None,
    toolkit_version: str | None,
    model_size_mb: float,
) -> list[str]:
    """The problems that forbid deploying the model on a board with ``facts`` (pure)."""
    problems = []
    if model_platform and facts["soc"] != normalise_name(model_platform):
        board = (
            facts["soc"] or f"not a known Rockchip SoC ({facts['compatible'] or 'no device tree'})"
        )
        problems.append(f"model built for {normalise_name(model_platform)} but board is {board}")
    if toolkit_version:
        problems += _version_problems(facts, toolkit_version)
    need_disk = model_size_mb + DISK_SLACK_MB
    if facts["free_disk_mb"] < need_disk:
        problems.append(
            f"not enough disk in {facts['workdir']}: {facts['free_disk_mb']:.1f} MB free, need "
            f"{need_disk:.1f} MB (model {model_size_mb:.1f} MB + {DISK_SLACK_MB:.0f} MB slack)"
        )
    need_memory = model_size_mb * MEMORY_FACTOR
    if facts["mem_available_mb"] < need_memory:
        problems.append(
            f"not enough memory: {facts['mem_available_mb']:.1f} MB available (MemAvailable), "
            f"need about {need_memory:.1f} MB ({MEMORY_FACTOR} x the {model_size_mb:.1f} MB model)"
        )
    return problems


def _version_problems(facts: dict[str, Any], toolkit: str) -> list[str]:
    problems = []
    driver, runtime = facts["driver_version"], facts["runtime_version"]
    if driver and version_key(driver) < version_key(MIN_DRIVER):
        problems.append(
            f"the board's NPU driver is v{driver}: upgrade the NPU driver to >= {MIN_DRIVER}; "
            "rknn-llm issues #97 #103"
        )
    toolkit = toolkit.lstrip("v")
    if runtime is None:
        problems.append(
            f"no rkllm runtime answered at {facts['runtime_lib']}: install librkllmrt {toolkit} "
            "(rknn-llm rkllm-runtime/Linux/librkllm_api) or point board.rkllm_lib at it"
        )
    elif runtime != toolkit:
        fix = (
            f"upgrade the runtime to {toolkit}"
            if version_key(runtime) < version_key(toolkit)
            else f"re-export the model with rkllm-toolkit {runtime} or install librkllmrt {toolkit}"
        )
        problems.append(
            f"the model was exported with rkllm-toolkit {toolkit} but the board runs librkllmrt "
            f"{runtime}: {fix} (rknn-llm #129, #534)"
        )
    return problems


def preflight(
    transport: Transport,
    *,
    model_platform: str | None,
    toolkit_version: str | None,
    model_size_mb: float,
    board_root: str = "",
    workdir: str = "/tmp/rkpipe-board",
    runtime_lib: str = DEFAULT_RUNTIME_LIB,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Read the board's facts and refuse a deployment that cannot work.

    Args:
        transport: how to reach the board.
        model_platform: the SoC the model was built for (``rk3588`` ...); None skips the check
            (an onnxruntime model runs anywhere).
        toolkit_version: the rkllm-toolkit version the model was exported with; None skips the
            driver and runtime checks (no rkllm model).
        model_size_mb: size of what will be deployed (MB, 10^6 B).
        board_root: prefix for /proc and /sys reads (a fake board's root directory).
        workdir: the board directory that receives the model (created if missing).
        runtime_lib: the ``librkllmrt.so`` to probe.
        timeout: seconds per command.

    Returns:
        ``soc``, ``compatible``, ``driver_version``, ``runtime_version``, ``runtime_platform``,
        ``runtime_lib``, ``free_disk_mb``, ``mem_available_mb``, ``workdir``.

    Raises:
        BoardError: listing every problem found, each with its fix.
    """
    board_root = board_root.rstrip("/")
    soc, compatible = read_soc(transport, board_root, timeout)
    runtime = read_runtime_info(transport, runtime_lib, timeout) if toolkit_version else {}
    facts: dict[str, Any] = {
        "soc": soc,
        "compatible": compatible,
        "driver_version": read_driver_version(transport, board_root, timeout),
        "runtime_version": runtime.get("runtime_version"),
        "runtime_platform": runtime.get("platform"),
        "runtime_lib": runtime_lib,
        "free_disk_mb": read_free_disk_mb(transport, workdir, timeout),
        "mem_available_mb": read_mem_available_mb(transport, board_root, timeout),
        "workdir": workdir,
    }
    if toolkit_version and facts["driver_version"] is None:
        log.warning("NPU driver version unreadable (debugfs needs root): not checked")
    problems = check_facts(
        facts,
        model_platform=model_platform,
        toolkit_version=toolkit_version,
        model_size_mb=model_size_mb,
    )
    if problems:
        raise BoardError("board preflight failed: " + "; ".join(problems))
    log.info("preflight ok: %s", facts)
    return facts


# ----------------------------------------------------------------------------- quick check


def board_address(board: BoardConfig) -> str:
    """Where the board is, for messages: ``host:port`` over SSH, the serial over adb."""
    if board.transport == "adb":
        return f"adb device {board.host or '(the only device)'}"
    return f"{board.host}:{board.port}"


def check_board_platform(board: BoardConfig, soc: str | None, compatible: str) -> None:
    """Refuse a board whose device tree names another SoC than ``board.platform`` (unset:
    nothing to check). ``rk3588s`` in either counts as ``rk3588``.

    Raises:
        BoardError: one line naming both SoCs and the fix.
    """
    if not board.platform:
        return
    expected = soc_from_compatible(f"rockchip,{normalise_name(board.platform)}")
    if soc is not None and soc == expected:
        return
    found = f"an {soc}" if soc else f"not a known Rockchip SoC ({compatible or 'empty'})"
    raise BoardError(
        f"board {board.name} at {board_address(board)} is {found} "
        f"({board.root.rstrip('/')}{COMPATIBLE_FILE}) but its config says platform: "
        f"{board.platform}; fix board.platform or pick the right board"
    )


def quick_check(board: BoardConfig, timeout_s: float = QUICK_TIMEOUT_S) -> dict[str, Any]:
    """Reach the board with its transport and check it is the configured one, within about
    ``timeout_s`` per step, before any conversion spends minutes for it.

    Connecting refuses an unknown or changed SSH host key (the one-line errors, naming the
    ``rkpipe board trust`` command that works); then the SoC is read from the device tree
    (below ``board.root``) and compared with ``board.platform`` when that is set. ``board=local``
    returns at once.

    Returns:
        ``transport``, and for a remote board ``soc``, ``compatible`` and, over SSH,
        ``host_key: known``.

    Raises:
        BoardError: unreachable (closed port, no SSH banner, adb device missing), host key
        refused, or SoC != board.platform; one line.
    """
    facts: dict[str, Any] = {"transport": board.transport}
    if board.transport == "local":
        return facts
    timeout = min(board.timeout_s, timeout_s)
    transport = make_transport(dataclasses.replace(board, timeout_s=timeout))
    try:
        soc, compatible = read_soc(transport, board.root.rstrip("/"), timeout)
    finally:
        close = getattr(transport, "close", None)
        if close is not None:
            close()
    facts |= {"soc": soc, "compatible": compatible}
    if board.transport == "ssh":
        facts["host_key"] = "known"  # connecting refuses any other
    check_board_platform(board, soc, compatible)
    log.info("board %s at %s answered: %s", board.name, board_address(board), facts)
    return facts
