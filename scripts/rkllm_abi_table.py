"""Tabulate the ABI of an ``rkllm.h``: struct sizes, field offsets and enum values, measured by
compiling a small probe against the header with the system compiler (g++).

The table, not the header, is committed (``tests/contract/rkllm_abi/<release>.json``, with the
header's sha256): the contract test ``tests/contract/test_rkllm_abi.py`` checks that the ctypes
structs of ``rkpipe.engines.rkllm_runner`` and the fake runtime's ``rkllm.h`` (compiled through
this same probe) equal it, so a mistake shared by the runner and the fake cannot pass.

    # one header you have (e.g. from a board's SDK)
    python scripts/rkllm_abi_table.py --header path/to/rkllm.h --release 1.3.0 \\
        --out tests/contract/rkllm_abi/1.3.0.json
    # every verified release, from a clone of https://github.com/airockchip/rknn-llm
    python scripts/rkllm_abi_table.py --rknn-llm ~/src/rknn-llm --out-dir tests/contract/rkllm_abi

The field lists come from the header itself (a small parser for the flat C of ``rkllm.h``:
``typedef struct { ... } Name;``, anonymous unions, named nested structs, function pointers);
the offsets and sizes come from the compiler, so the table is the layout the runtime was built
with on this ABI (LP64: x86_64 and aarch64 agree for these types).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER_IN_REPO = "rkllm-runtime/Linux/librkllm_api/include/rkllm.h"
# The releases whose header the runner was checked against (rkllm_runner.VERIFIED_RELEASES),
# as airockchip/rknn-llm tags them (1.3.0 is the commit "release v1.3.0", untagged).
RELEASE_REVS = {
    "1.2.0": "release-v1.2.0",
    "1.2.1": "release-v1.2.1",
    "1.2.3": "release-v1.2.3",
    "1.3.0": ":/^release v1.3.0",
}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced braces")


def _statements(body: str) -> list[str]:
    """The top-level ``;``-terminated statements of a struct body (nested braces kept whole)."""
    out, depth, current = [], 0, []
    for char in body:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ";" and depth == 0:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    return [s for s in out if s]


def _field_name(statement: str) -> str:
    pointer = re.search(r"\(\s*\*\s*(\w+)\s*\)", statement)  # a function pointer field
    if pointer:
        return pointer.group(1)
    statement = re.sub(r"\[[^\]]*\]", "", statement)
    return re.findall(r"\w+", statement)[-1]


def struct_fields(body: str) -> list[str]:
    """Field names of a struct body; an anonymous union's members count as the struct's."""
    fields = []
    for statement in _statements(body):
        if "{" in statement:
            inner_start = statement.index("{")
            inner_end = _matching_brace(statement, inner_start)
            after = statement[inner_end + 1 :].strip()
            if after:
                fields.append(_field_name(after))  # a named nested struct/union
            else:
                fields += struct_fields(statement[inner_start + 1 : inner_end])
        else:
            fields.append(_field_name(statement))
    return fields


def parse_header(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """``({struct: [fields]}, [enum constants])`` of the typedefs in ``rkllm.h``."""
    text = strip_comments(text)
    structs: dict[str, list[str]] = {}
    enums: list[str] = []
    for match in re.finditer(r"typedef\s+(struct|enum)\s*\{", text):
        open_at = match.end() - 1
        close_at = _matching_brace(text, open_at)
        name = re.match(r"\s*(\w+)\s*;", text[close_at + 1 :])
        if name is None:
            continue
        body = text[open_at + 1 : close_at]
        if match.group(1) == "struct":
            structs[name.group(1)] = struct_fields(body)
        else:
            enums += [m.group(1) for m in re.finditer(r"(\w+)\s*(?:=[^,]*)?(?:,|$)", body)]
    return structs, enums


def probe_source(header: Path, structs: dict[str, list[str]], enums: list[str]) -> str:
    """C that prints the table as JSON."""
    lines = [
        "#include <stdbool.h>", "#include <stddef.h>", "#include <stdint.h>",
        "#include <stdio.h>", f'#include "{header.name}"', "int main(void) {",
        'printf("{\\"sizes\\": {");',
    ]  # fmt: skip
    sizes = [f'printf("\\"{s}\\": %zu", sizeof({s}));' for s in structs]
    offsets = [
        f'printf("\\"{s}.{f}\\": %zu", offsetof({s}, {f}));'
        for s, fields in structs.items()
        for f in fields
    ]
    values = [f'printf("\\"{e}\\": %d", (int){e});' for e in enums]
    for group, closing in ((sizes, "}, \\\"offsets\\\": {"), (offsets, "}, \\\"enums\\\": {"),
                           (values, "}}\\n")):  # fmt: skip
        lines += [item if i == 0 else 'printf(", ");' + item for i, item in enumerate(group)]
        lines.append(f'printf("{closing}");')
    return "\n".join(lines + ["return 0;", "}"]) + "\n"


def abi_table(header: Path, release: str, defines: tuple[str, ...] = ()) -> dict:
    """Compile the probe against ``header`` (with ``-D`` ``defines``) and return its table.

    Compiled as C++ (g++): Rockchip's headers include ``<cstdint>``; the layout of these
    plain structs is the same as C's (standard layout, ``extern "C"``)."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError("g++ not found: apt-get install g++")
    text = header.read_text(encoding="utf-8")
    structs, enums = parse_header(_active(text, defines))
    with tempfile.TemporaryDirectory(prefix="rkllm-abi-") as tmp:
        source, binary = Path(tmp) / "probe.c", Path(tmp) / "probe"
        source.write_text(probe_source(header, structs, enums), encoding="utf-8")
        flags = [f"-D{d}" for d in defines]
        build = subprocess.run(
            [compiler, "-x", "c++", "-O0", *flags, f"-I{header.parent}", "-o", str(binary),
             str(source)],
            capture_output=True, text=True,
        )  # fmt: skip
        if build.returncode != 0:
            raise RuntimeError(f"the probe did not compile against {header}:\n{build.stderr}")
        table = json.loads(subprocess.run([str(binary)], capture_output=True, text=True,
                                          check=True).stdout)  # fmt: skip
    return {
        "release": release,
        "header_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "data_model": "LP64",
        **table,
    }


def _active(text: str, defines: tuple[str, ...]) -> str:
    """The header as the preprocessor sees it with ``defines`` (for a header with #ifdefs,
    like the fake runtime's); plain headers come back unchanged but for their comments."""
    cpp = shutil.which("g++")
    if cpp is None or "#if" not in text:
        return text
    flags = [f"-D{d}" for d in defines]
    out = subprocess.run(
        [cpp, "-E", "-P", *flags, "-x", "c++", "-"], input=_without_includes(text),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def _without_includes(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#include"))


def from_rknn_llm(repo: Path, out_dir: Path) -> list[Path]:
    """Tables of every verified release from a clone of airockchip/rknn-llm."""
    written = []
    git = ["git", "-C", str(repo)]
    for release, rev in RELEASE_REVS.items():
        commit = subprocess.run([*git, "rev-parse", rev], capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        text = subprocess.run([*git, "show", f"{commit}:{HEADER_IN_REPO}"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            header = Path(tmp) / "rkllm.h"
            header.write_text(text, encoding="utf-8")
            written.append(write_table(abi_table(header, release), out_dir / f"{release}.json"))
    return written


def write_table(table: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--header", type=Path, help="an rkllm.h")
    parser.add_argument("--release", help="the runtime release the header belongs to")
    parser.add_argument("--out", type=Path, help="where to write the table (default: stdout)")
    parser.add_argument("--rknn-llm", type=Path, help="a clone of airockchip/rknn-llm")
    parser.add_argument("--out-dir", type=Path, default=Path("tests/contract/rkllm_abi"))
    args = parser.parse_args()
    if args.rknn_llm:
        for path in from_rknn_llm(args.rknn_llm, args.out_dir):
            print(f"wrote {path}")
        return 0
    if not (args.header and args.release):
        parser.error("give --header and --release, or --rknn-llm")
    table = abi_table(args.header, args.release)
    if args.out:
        print(f"wrote {write_table(table, args.out)}")
    else:
        json.dump(table, sys.stdout, indent=1, sort_keys=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
