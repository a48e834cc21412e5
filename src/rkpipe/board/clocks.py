"""Pin a board's CPU, NPU and DDR clocks at their maximum for benchmarking, as Rockchip's
``fix_freq_<soc>.sh`` scripts do, through any transport (every path below ``board_root``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rkpipe.board.transport import Transport
from rkpipe.config.platforms import normalise_name
from rkpipe.errors import BoardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreqTarget:
    """One clock to pin: where its available frequencies are listed, where its governor and
    its frequency are written (``governor`` None: no governor file, as rk3562's NPU)."""

    available: str
    governor: str | None
    setter: str


def _devfreq(device: str) -> FreqTarget:
    base = f"/sys/class/devfreq/{device}"
    return FreqTarget(
        f"{base}/available_frequencies", f"{base}/governor", f"{base}/userspace/set_freq"
    )


def _cpufreq(policy_dir: str) -> FreqTarget:
    return FreqTarget(
        f"{policy_dir}/scaling_available_frequencies",
        f"{policy_dir}/scaling_governor",
        f"{policy_dir}/scaling_setspeed",
    )


# The NPU clocks of Rockchip's scripts/fix_freq_<soc>.sh (rknn-llm v1.3.0).
NPU_TARGETS = {
    "rk3588": _devfreq("fdab0000.npu"),
    "rk3576": _devfreq("27700000.npu"),
    "rv1126b": _devfreq("22000000.npu"),
    "rk3562": FreqTarget(
        "/sys/class/devfreq/ff300000.npu/available_frequencies",
        None,
        "/sys/kernel/debug/rknpu/freq",
    ),
}
DDR_TARGET = _devfreq("dmc")
CPU_DIR = "/sys/devices/system/cpu"
# $1: board root, then more files to read. Prints "path\0content\0" (path without the root)
# for every readable CPU idle-state switch, CPU policy frequency list and extra file.
_READ_SCRIPT = (
    'root=$1; shift; for f in "$root"' + CPU_DIR + "/cpu[0-9]*/cpuidle/state1/disable "
    '"$root"' + CPU_DIR + "/cpufreq/policy[0-9]*/scaling_available_frequencies "
    '"$@"; do [ -r "$f" ] && printf "%s\\0%s\\0" "${f#"$root"}" "$(cat "$f")"; done; true'
)
# Pairs (path, value): write each, print the paths written ("\0"-terminated).
_WRITE_SCRIPT = (
    'while [ "$#" -ge 2 ]; do printf "%s\\n" "$2" > "$1" 2>/dev/null && printf "%s\\0" "$1"; '
    "shift 2; done; true"
)


def plan_frequency_writes(soc: str, readings: dict[str, str]) -> dict[str, str]:
    """What to write, in order, given the files read from the board (pure).

    ``readings`` maps board paths to contents: ``cpuN/cpuidle/state1/disable`` switches,
    CPU policies' ``scaling_available_frequencies`` and the SoC's NPU / DDR frequency lists.
    Each clock gets the ``userspace`` governor, then its highest listed frequency.

    Raises:
        BoardError: an SoC without a Rockchip fix_freq script.
    """
    soc = normalise_name(soc)
    if soc not in NPU_TARGETS:
        known = ", ".join(sorted(NPU_TARGETS))
        raise BoardError(f"no frequency table for {soc!r}; known: {known}")
    plan = {path: "1" for path in readings if path.endswith("/cpuidle/state1/disable")}
    policies = [
        p.rsplit("/", 1)[0] for p in readings if p.endswith("/scaling_available_frequencies")
    ]
    for target in [_cpufreq(p) for p in sorted(policies)] + [NPU_TARGETS[soc], DDR_TARGET]:
        freqs = [int(f) for f in readings.get(target.available, "").split() if f.isdigit()]
        if not freqs:
            log.info("no frequencies in %s: skipped", target.available)
            continue
        if target.governor:
            plan[target.governor] = "userspace"
        plan[target.setter] = str(max(freqs))
    return plan


def _pairs(text: str) -> dict[str, str]:
    parts = text.split("\0")
    return dict(zip(parts[0:-1:2], parts[1::2], strict=False))


def pin_frequency(
    transport: Transport, soc: str, *, board_root: str = "", timeout: float = 60.0
) -> dict[str, str]:
    """Do what Rockchip's ``fix_freq_<soc>.sh`` does, with each clock's own maximum.

    Disables the deepest CPU idle state (``cpuN/cpuidle/state1/disable``), sets each CPU
    policy, the NPU and the DDR to the ``userspace`` governor at their highest available
    frequency (rk3562's NPU through ``/sys/kernel/debug/rknpu/freq``). Needs root on a real
    board; files that are missing or not writable are skipped. Two commands in all.

    Returns:
        {sysfs path (without ``board_root``): value written} for every write that succeeded.

    Raises:
        BoardError: unknown SoC, or a transport failure.
    """
    root = board_root.rstrip("/")
    extra = [root + t.available for t in (NPU_TARGETS.get(normalise_name(soc)), DDR_TARGET) if t]
    read = transport.run(["sh", "-c", _READ_SCRIPT, "sh", root, *extra], timeout)
    plan = plan_frequency_writes(soc, _pairs(read.stdout))
    args = [item for path, value in plan.items() for item in (root + path, value)]
    wrote = transport.run(["sh", "-c", _WRITE_SCRIPT, "sh", *args], timeout)
    done = {p[len(root) :] for p in wrote.stdout.split("\0") if p}
    changed = {path: value for path, value in plan.items() if path in done}
    skipped = len(plan) - len(changed)
    log.info("pinned %d clock settings on %s (%d not writable)", len(changed), soc, skipped)
    return changed
