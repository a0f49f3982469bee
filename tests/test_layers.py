"""The layer rules: a module never imports a layer above its own.

From the bottom up (README, "Layout"):

- base: `logstore.errors`, `logstore.types`, `logstore.acls`, `logstore.clock`,
  `logstore.allocator`, `logstore.timeparse`, `logstore.lazy`, `logstore.addresses`: leaves
  every layer may use;
- codec (`logstore.codec`): the record batch format, the gRPC framing, the partitioner;
- storage (`logstore.storage`): segments, indexes, partition logs, the log manager;
- client (`logstore.client`): Admin, Producer, Consumer over gRPC;
- server (`server/`, installed as `logstore.server`): the broker, its groups and security;
- patterns and examples: built on the client; cli: on everything.

Checked twice: statically, every import statement of every module (function-level ones
too); and at run time, what importing a layer really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: source folder -> the dotted package it installs as
PACKAGE_ROOTS = {
    ROOT / "logstore": "logstore",
    ROOT / "server": "logstore.server",
    ROOT / "cli": "logstore.cli",
}

BASE = (
    "logstore.errors",
    "logstore.types",
    "logstore.acls",
    "logstore.clock",
    "logstore.allocator",
    "logstore.timeparse",
    "logstore.lazy",
    "logstore.addresses",
)
#: generated protobuf messages (no gRPC): any layer that speaks the wire format may use them
PROTO_MESSAGES = ("logstore.v1.logstore_pb2",)

_ABOVE_CLIENT = ("logstore.server", "logstore.cli", "logstore.patterns", "logstore.examples")

#: layer -> (module prefixes it is made of, import prefixes it must never use)
FORBIDDEN: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "base": (
        BASE,
        (
            "logstore.codec",
            "logstore.storage",
            "logstore.client",
            *_ABOVE_CLIENT,
            "logstore.v1",
            "grpc",
            "numpy",
        ),
    ),
    "codec": (
        ("logstore.codec",),
        (
            "logstore.storage",
            "logstore.client",
            *_ABOVE_CLIENT,
            "logstore.v1.logstore_pb2_grpc",
            "grpc",
            "numpy",
        ),
    ),
    "storage": (
        ("logstore.storage",),
        ("logstore.client", *_ABOVE_CLIENT, "logstore.v1", "grpc"),
    ),
    "client": (
        ("logstore.client",),
        ("logstore.storage", *_ABOVE_CLIENT, "numpy"),
    ),
    "patterns and examples": (
        ("logstore.patterns", "logstore.examples"),
        ("logstore.storage", "logstore.server", "logstore.cli"),
    ),
    "server": (
        ("logstore.server",),
        ("logstore.client", "logstore.cli", "logstore.examples", "logstore.patterns"),
    ),
}

#: Broker logic that must stay testable without gRPC (the servicers are thin shells over it).
PURE_SERVER_MODULES = (
    "logstore.server.groups.coordinator",
    "logstore.server.groups.assignors",
    "logstore.server.groups.offsets_store",
    "logstore.server.groups.offset_reset",
    "logstore.server.producer_ids",
    "logstore.server.security.acl_store",
    "logstore.server.security.acl_rules",
    "logstore.server.cluster.placement",
    "logstore.server.cluster.election",
    "logstore.server.cluster.isr",
    # the Kafka listener's protocol logic: pure code over bytes (h11's shape)
    "logstore.server.kafka.frames",
    "logstore.server.kafka.apis",
    "logstore.server.kafka.connection",
    "logstore.server.kafka.error_codes",
    "logstore.server.kafka.security",
    # the produce and read paths both protocols share
    "logstore.server.produce_path",
    "logstore.server.fetch_path",
)

#: The clients' I/O-free cores: tested without a broker, so they must not reach for gRPC
#: or the connection code; the threads around them do the I/O.
PURE_CLIENT_MODULES = (
    "logstore.client.coordinators",
    "logstore.client.metadata",
    "logstore.client.producer.accumulator",
    "logstore.client.producer.futures",
    "logstore.client.producer.retry",
    "logstore.client.producer.sequences",
    "logstore.client.consumer.fetch_positions",
    "logstore.client.consumer.member_state",
    "logstore.client.consumer.options",
    "logstore.client.consumer.progress",
    "logstore.client.consumer.record_buffer",
)

#: Deliberate exceptions, each with its reason.
ALLOWED = {
    # The broker's metrics count dead letter and retry topics by the names the patterns
    # library gives them; the naming rules are plain functions over strings.
    ("logstore.server.metrics", "logstore.patterns.headers"),
}


def _module_name(path: Path) -> str:
    for folder, package in PACKAGE_ROOTS.items():
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(f"{path} is outside the packages")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in PACKAGE_ROOTS:
        for path in sorted(folder.rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module `path` imports, by absolute name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from pkg import module` imports that module (and pkg's __init__, which its own
            # layer's rules check); `from module import name` imports the module.
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return found


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


MODULES = _modules()


def test_every_module_belongs_to_a_checked_layer_or_the_top() -> None:
    """A new folder must be placed in a layer here, or the rules would silently skip it."""
    layered = tuple(p for members, _ in FORBIDDEN.values() for p in members)
    top = ("logstore.cli", "logstore.v1")  # the CLI may use every layer; v1 is generated
    unplaced = [m for m in MODULES if not _under(m, layered + top) and m != "logstore"]
    assert unplaced == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_its_own(layer: str) -> None:
    members, forbidden = FORBIDDEN[layer]
    checked = [m for m in MODULES if _under(m, members)]
    assert checked, f"no module found for layer {layer}"
    wrong = sorted(
        f"{module} imports {target}"
        for module in checked
        for target in _imports(module, MODULES[module])
        if _under(target, forbidden)
        and not (layer == "codec" and _under(target, PROTO_MESSAGES))
        and not any(_under(target, (allowed,)) for m, allowed in ALLOWED if m == module)
    )
    assert wrong == []


@pytest.mark.parametrize("module", PURE_SERVER_MODULES)
def test_broker_logic_imports_no_grpc(module: str) -> None:
    """Protobuf messages are plain data and allowed; gRPC itself is not."""
    grpc_imports = sorted(
        t
        for t in _imports(module, MODULES[module])
        if _under(t, ("grpc", "logstore.v1.logstore_pb2_grpc"))
    )
    assert grpc_imports == [], f"{module} must stay pure"


@pytest.mark.parametrize("module", PURE_CLIENT_MODULES)
def test_client_cores_do_no_io(module: str) -> None:
    io_imports = sorted(
        t
        for t in _imports(module, MODULES[module])
        if _under(t, ("grpc", "logstore.v1", "logstore.client._connection"))
    )
    assert io_imports == [], f"{module} must stay free of I/O"


@pytest.mark.parametrize("module", PURE_SERVER_MODULES + PURE_CLIENT_MODULES)
def test_pure_modules_load_no_grpc(module: str) -> None:
    """At run time too: importing one runs its packages' __init__ files, which must not
    drag in the gRPC siblings (they export lazily)."""
    loaded = _loaded_after(f"import {module}")
    assert sorted(m for m in loaded if _under(m, ("grpc",))) == []


def test_the_rules_catch_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: a storage module importing the client is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from logstore.client import producer\n")
    found = _imports("logstore.storage.bad", bad)
    assert "logstore.client" not in found
    assert "logstore.client.producer" in found
    assert _under("logstore.client.producer", FORBIDDEN["storage"][1])


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_storage_loads_no_grpc_client_or_server() -> None:
    loaded = _loaded_after(
        "import logstore.storage.log_manager, logstore.storage.log_cleaner, "
        "logstore.codec.record_batch"
    )
    leaked = sorted(m for m in loaded if _under(m, ("grpc", "logstore.client", "logstore.server")))
    assert leaked == []


def test_clients_load_no_storage_server_or_numpy() -> None:
    loaded = _loaded_after(
        "from logstore import Admin, Consumer, Producer\nimport logstore.patterns"
    )
    leaked = sorted(
        m for m in loaded if _under(m, ("numpy", "logstore.storage", "logstore.server"))
    )
    assert leaked == []


def test_broker_loads_no_client() -> None:
    loaded = _loaded_after("import logstore.server.app")
    assert sorted(m for m in loaded if _under(m, ("logstore.client",))) == []
