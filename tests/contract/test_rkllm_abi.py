"""The runner's ctypes structs and the fake runtime's ``rkllm.h`` against the ABI tables of
Rockchip's own headers (``tests/contract/rkllm_abi/<release>.json``, measured from each release's
``rkllm.h`` by ``scripts/rkllm_abi_table.py`` with the compiler, not transcribed). The fake header
goes through the same probe, so a layout mistake shared by the runner and the fake fails here."""

from __future__ import annotations

import ctypes
import importlib.util
import json
from pathlib import Path

import pytest
from fake_runtime.build import ABI_FLAGS

from rkpipe.engines import rkllm_runner as runner

HERE = Path(__file__).resolve().parent
TABLES = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "rkllm_abi").glob("*.json"))}
FAKE_HEADER = HERE / "fake_runtime" / "rkllm.h"
# The union of RKLLMInput is padded in ctypes beyond its largest member (and the fake leaves the
# multimodal members out): only its named fields' offsets must match, its size may differ.
SIZE_MAY_DIFFER = {"RKLLMInput"}


def load_script():
    path = HERE.parents[1] / "scripts" / "rkllm_abi_table.py"
    spec = importlib.util.spec_from_file_location("rkllm_abi_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ctypes_structs(abi: runner.Abi) -> dict[str, type]:
    """The C struct each ctypes class of ``abi`` stands for."""
    structs = {
        "RKLLMParam": abi.param, "RKLLMExtendParam": runner.ExtendParam,
        "RKLLMInput": abi.input, "RKLLMTokenInput": runner.TokenInput,
        "RKLLMInferParam": abi.infer, "RKLLMResult": abi.result,
        "RKLLMResultLogits": runner.Logits, "RKLLMResultLastHiddenLayer": runner.LastHiddenLayer,
        "RKLLMLoraAdapter": runner.LoraAdapter, "RKLLMLoraParam": runner.LoraParam,
    }  # fmt: skip
    if abi.has_perf:
        structs["RKLLMPerfStat"] = runner.PerfStat
    if abi.callback_struct:
        structs["RKLLMCallback"] = runner.Callbacks13
    return structs


def ctypes_offsets(cls: type) -> dict[str, int]:
    """Field offsets, the anonymous union's members (``u``) flattened as C sees them."""
    offsets = {}
    for name, kind, *_ in cls._fields_:
        at = getattr(cls, name).offset
        if name == "u":
            offsets |= {m: at + getattr(kind, m).offset for m, *_ in kind._fields_ if m != "_pad"}
        else:
            offsets[name] = at
    return offsets


def test_the_tables_cover_every_verified_release():
    assert tuple(TABLES) == runner.VERIFIED_RELEASES
    assert all(len(t["header_sha256"]) == 64 and t["data_model"] == "LP64" for t in TABLES.values())


@pytest.mark.parametrize("release", runner.VERIFIED_RELEASES)
def test_the_ctypes_structs_equal_the_release_header(release):
    table = TABLES[release]
    abi = runner.ABIS[runner.abi_for_version(release)]
    for struct, cls in ctypes_structs(abi).items():
        assert struct in table["sizes"], f"{struct} is not in {release}'s rkllm.h"
        if struct in SIZE_MAY_DIFFER:
            assert ctypes.sizeof(cls) >= table["sizes"][struct], struct
        else:
            assert ctypes.sizeof(cls) == table["sizes"][struct], f"{struct} size, {release}"
        for field, offset in ctypes_offsets(cls).items():
            key = f"{struct}.{field}"
            if field == "reserved":
                continue  # padding: its end is the struct's size, checked above
            if key in table["offsets"]:
                assert offset == table["offsets"][key], f"{key} offset, {release}"
            else:  # 1.2.0 kept later fields inside its reserved bytes: they must lie there
                reserved = table["offsets"].get(f"{struct}.reserved")
                assert reserved is not None and offset >= reserved, f"{key} not in {release}"


@pytest.mark.parametrize("release", runner.VERIFIED_RELEASES)
def test_the_runners_enum_values_equal_the_release_header(release):
    enums = TABLES[release]["enums"]
    assert (runner.RUN_NORMAL, runner.RUN_WAITING, runner.RUN_FINISH, runner.RUN_ERROR) == (
        enums["RKLLM_RUN_NORMAL"], enums["RKLLM_RUN_WAITING"],
        enums["RKLLM_RUN_FINISH"], enums["RKLLM_RUN_ERROR"],
    )  # fmt: skip
    assert (runner.INPUT_PROMPT, runner.INPUT_TOKEN) == (
        enums["RKLLM_INPUT_PROMPT"],
        enums["RKLLM_INPUT_TOKEN"],
    )
    assert runner.INFER_GENERATE == enums["RKLLM_INFER_GENERATE"]
    assert runner.INFER_GET_LOGITS == enums["RKLLM_INFER_GET_LOGITS"]  # device accuracy


@pytest.mark.parametrize("release", runner.VERIFIED_RELEASES)
def test_the_fake_runtimes_header_equals_the_release_header(release):
    """The fake's header compiled through the same probe, with the flags its build uses."""
    abi = runner.abi_for_version(release)
    defines = tuple(flag.removeprefix("-D") for flag in ABI_FLAGS[abi])
    fake = load_script().abi_table(FAKE_HEADER, f"fake {abi}", defines)
    real = TABLES[release]
    # A type the release lacks (the fake's RKLLMPerfStat under 1.2.0) is the fake's own helper;
    # if a shared struct used it as a member, that member's offset check below fails.
    shared = set(fake["sizes"]) & set(real["sizes"])
    assert {"RKLLMParam", "RKLLMInput", "RKLLMInferParam", "RKLLMResult", "RKLLMLoraAdapter",
            "RKLLMLoraParam", "RKLLMResultLogits"} <= shared  # fmt: skip
    for struct in shared - SIZE_MAY_DIFFER:
        assert fake["sizes"][struct] == real["sizes"][struct], f"{struct}: fake {abi}, {release}"
    for key, offset in fake["offsets"].items():
        struct, field = key.split(".")
        if struct not in shared or field == "reserved":
            continue
        if key in real["offsets"]:
            assert real["offsets"][key] == offset, f"{key}: fake {abi} vs {release}"
        else:  # as in the ctypes test: a later field must lie in the release's reserved bytes
            reserved = real["offsets"].get(f"{struct}.reserved")
            assert reserved is not None and offset >= reserved, f"{key} not in {release}"
    for name, value in fake["enums"].items():
        assert real["enums"][name] == value, f"{name}: fake {abi} vs {release}"


def test_the_probe_parses_nested_and_anonymous_members():
    script = load_script()
    structs, enums = script.parse_header(
        "typedef enum { A = 0, B = 2, } E;\n"
        "typedef struct { int a; union { char* p; struct { int x; } s; }; float f[4];"
        " int (*cb)(void*); struct { int y; } named; } S;"
    )
    assert structs == {"S": ["a", "p", "s", "f", "cb", "named"]} and enums == ["A", "B"]
