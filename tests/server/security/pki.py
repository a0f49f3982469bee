"""Throwaway certificates for the TLS tests, made with the `openssl` command line.

Every certificate is an EC P-256 key valid for two days. `make_ca` makes a self-signed CA,
`make_leaf` a certificate it signs, with the X.509 extensions given (subjectAltName,
extendedKeyUsage...). `require_openssl` skips the calling test when openssl is missing,
except in CI, where the TLS tests must run and it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

#: extensions of a broker certificate for 127.0.0.1 that may also serve as a client
#: certificate (a cluster broker presents it to its peers with mutual TLS)
BROKER_EXTENSIONS = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d: Path, name: str) -> None:
    """`d/name.pem` and `d/name.key`: a self-signed CA named `name`."""
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_leaf(d: Path, name: str, ca: str, cn: str, extensions: str) -> None:
    """`d/name.pem` and `d/name.key`: a certificate for `cn` signed by the CA `ca`."""
    (d / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


def cannot_run(why: str) -> NoReturn:
    """Skip the TLS tests, saying why; in CI (the `CI` variable set), where `.ci/run`
    installs openssl and they must not pass unseen, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"the TLS tests must run in CI, but {why}", pytrace=False)
    pytest.skip(f"{why}: the TLS tests make their certificates with the openssl command")


def require_openssl() -> None:
    if shutil.which("openssl") is None:
        cannot_run("the openssl command is not on PATH")
