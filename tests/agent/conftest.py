"""Agent fixtures: real signed bundle tars of the PCB model (two good versions, one whose reference outputs do not
match its model), served over HTTP; helpers to build desired states."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from export.bundle import finish_bundle, npz_bytes
from fleet.control import ControlSigner
from fleet.protocol import Artifact, Command, Desired, ReleaseSpec, StageSpec, encode
from runtime.bundle import read_manifest
from runtime.fsio import sha256_file
from runtime.signing import load_private_key, sign_document
from tests.agent.servers import ArtifactServer
from tests.conftest import IMAGES, export_preset, shared_once

PCB_IMAGES = sorted((IMAGES / "pcb_winml").glob("*.png"))


def make_tar(bundle_dir: Path, out: Path, private_key: Path, mutate=None) -> Path:
    """Re-pack an exported bundle directory as a signed tar, optionally changing its files first."""
    staging = out / f".staging-{bundle_dir.name}"
    shutil.copytree(bundle_dir, staging)
    (staging / "manifest.json").unlink()
    (staging / "manifest.sig").unlink(missing_ok=True)
    if mutate is not None:
        mutate(staging)
    manifest = read_manifest(bundle_dir)
    return finish_bundle(staging, manifest, out / f"{manifest.bundle_id}.tar", load_private_key(private_key),
                         as_tar=True)[0]


def _swap_reference_classes(staging: Path) -> None:
    """The model stays, its recorded reference outputs flip the two classes: every device check must fail."""
    with np.load(staging / "reference.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for k in arrays:
        if k.startswith("output."):
            arrays[k] = arrays[k][:, ::-1].copy()
    (staging / "reference.npz").write_bytes(npz_bytes(arrays))


@pytest.fixture(scope="session")
def tars(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """'v1.0', 'v1.1': good signed tars; 'bad': v1.2 whose reference outputs disagree with its model;
    'unknown-key': v1.3 signed by a key the device does not trust."""
    work = tmp_path_factory.mktemp("agent-bundles")

    def build(out: Path) -> dict[str, Path]:
        result = {}
        for key, version in (("v1.0", "1.0"), ("v1.1", "1.1"), ("bad", "1.2"), ("unknown-key", "1.3")):
            d = export_preset("pcb-aoi", work / key, None, version=version)
            signer = keys["other_private"] if key == "unknown-key" else keys["private"]
            result[key] = make_tar(d, out, signer, _swap_reference_classes if key == "bad" else None)
        return result

    return shared_once(tmp_path_factory, "agent-tars", build)


@pytest.fixture(scope="session")
def artifact_server(tars: dict[str, Path]) -> Iterator[ArtifactServer]:
    root = next(iter(tars.values())).parent
    server = ArtifactServer(root).start()
    yield server
    server.stop()


def release_for(tar: Path, revision: int, mode: str = "shadow") -> tuple[ReleaseSpec, Artifact]:
    bundle = tar.name.removesuffix(".tar")
    release = ReleaseSpec(name="pcb-screen", revision=revision, mode=mode,
                          stages=[StageSpec(role="screen", bundle=bundle, candidate_classes=["Defective"],
                                            threshold=0.5)])
    return release, Artifact(bundle=bundle, url="", sha256=sha256_file(tar), size=tar.stat().st_size)


def desired_for(server: ArtifactServer, tar: Path, device: str, revision: int, release_revision: int | None = None,
                ) -> Desired:
    release, artifact = release_for(tar, release_revision if release_revision is not None else revision)
    artifact = artifact.model_copy(update={"url": server.url(tar.name)})
    return Desired(device=device, revision=revision, release=release, artifacts=[artifact])


def signed(msg: Desired | Command, keys: dict[str, Path], device: str | None = None) -> bytes:
    """The message as the fleet sends it: signed with its control key (`keys["control_private"]`, which the
    test devices trust); a command gets `device` and an expiry first, as fleet.control.ControlSigner does."""
    signer = ControlSigner(load_private_key(keys["control_private"]), command_ttl_s=600)
    if isinstance(msg, Desired):
        return encode(signer.desired(msg))
    assert device is not None, "a command is signed for one device"
    return encode(signer.command(msg, device))


def signed_doc(doc: dict, keys: dict[str, Path], device: str) -> bytes:
    """A raw command document (e.g. an older wire form) as the fleet's control key signs it: for `device`,
    with a nonce and an expiry."""
    expires = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat(timespec="milliseconds")
    doc = {**doc, "device": device, "nonce": uuid.uuid4().hex, "expires_at": expires}
    return json.dumps({**doc, "signature": sign_document(doc, load_private_key(keys["control_private"]))}).encode()
