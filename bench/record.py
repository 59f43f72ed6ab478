"""Where every benchmark writes its results: ``bench/results/<name>.json`` (rows + machine + versions + command)
and ``bench/results/<name>.md`` (the same as a table a person reads)."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from kernels.host import cpu_name

# $BENCH_RESULTS redirects the records (a device run writes them under its $OUT)
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
PACKAGES = ("torch", "timm", "apache-tvm", "optuna", "ray", "numpy")
LOAD_AT_START = os.getloadavg()  # benches import this module first: the machine's load before they ran


def cpu_level(flags: set[str]) -> str:
    """The x86 feature level the kernels use, from /proc/cpuinfo's flags: the machines here are AMD Zen 3 (AVX2
    only), Zen 4 or Zen 5 (AVX-512 with VNNI and VPOPCNTDQ), and the same figure differs between them."""
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI" + (" VPOPCNTDQ" if "avx512_vpopcntdq" in flags else "")
    if "avx512bw" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def machine() -> dict[str, Any]:
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:  # LLVM's name for it (znver3, znver4, znver5): the generation, which the feature level alone does not say
        llvm = cpu_name()
    except ImportError:  # no TVM to ask, on a machine it never named
        llvm = ""
    if flags or llvm:
        cpu = f"{cpu} ({', '.join(x for x in (llvm, cpu_level(flags) if flags else '') if x)})"
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    gpu = {}
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        torch = sys.modules["torch"]
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {
        **gpu,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in LOAD_AT_START],  # 1, 5, 15 min, before the bench ran
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |",
            *("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows)]


def write(name: str, rows: list[dict[str, Any]], notes: str = "", extra: dict[str, Any] | None = None
          ) -> tuple[Path, Path]:
    """Write the rows with the machine, versions and the command that made them (plus ``extra`` top-level fields,
    e.g. summary figures); return the two paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], Path(__file__).resolve().parent.parent),
                                    *sys.argv[1:]])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    payload = {"name": name, "command": command, "date": when, "machine": info, "notes": notes, **(extra or {}),
               "rows": rows}
    json_path = RESULTS / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")

    lines = [f"# {name}", "", notes, ""] if notes else [f"# {name}", ""]
    lines += [
        f"Command: `{command}`  ",
        f"Date: {when}  ",
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, load average before the run "
        f"{' / '.join(map(str, info['load_average_at_start']))} (1 / 5 / 15 min)  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "",
        *_table(rows),
    ]
    for key, value in (extra or {}).items():  # extra tables (a list of rows), e.g. a summary
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            lines += ["", f"## {key}", "", *_table(value)]
    md_path = RESULTS / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
