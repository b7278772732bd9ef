"""SIGKILL in the middle of a promotion or a registration (a subprocess running the CLI, killed
at a patched write): the pointer is the old or the new one and parses, no half version is
visible, and the registry works afterwards."""

from __future__ import annotations

import json
import sys

import pytest

from skinedge.registry import Registry
from tests.reliability.faults import KILL_AT_FSYNC, run_killed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the kill patches read /proc/self/fd")

#: Kill when a file whose path ends with SUFFIX is fsync'd for the NTH time, after cutting
#: CUT bytes off its end (a torn append; 0: the bytes all reached the disk).
KILL_AT_FSYNC_OF = """
_fsync_of, _seen = os.fsync, [0]

def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(SUFFIX):
        _seen[0] += 1
        if _seen[0] == NTH:
            if CUT:
                os.ftruncate(fd, os.fstat(fd).st_size - CUT)
            die()
    return _fsync_of(fd)

os.fsync = fsync
"""

#: Kill just before (AFTER=False) or just after (AFTER=True) a rename onto a path named NAME.
KILL_AT_RENAME = """
_replace, _rename = os.replace, os.rename

def _wrap(real):
    def move(src, dst, *args, **kwargs):
        hit = os.path.basename(os.fspath(dst)) == NAME
        if hit and not AFTER:
            die()
        result = real(src, dst, *args, **kwargs)
        if hit:
            die()
        return result
    return move

os.replace, os.rename = _wrap(_replace), _wrap(_rename)
"""

#: (patch, names, which pointer survives the kill)
PROMOTION_KILLS = {
    "audit-started-line-torn": (KILL_AT_FSYNC_OF, {"SUFFIX": "audit.jsonl", "NTH": 1,
                                                   "CUT": 9}, "old"),
    "pointer-temporary-half-written": (KILL_AT_FSYNC, {"PREFIX": ".server.json."}, "old"),
    "before-pointer-rename": (KILL_AT_RENAME, {"NAME": "server.json", "AFTER": False}, "old"),
    "after-pointer-rename": (KILL_AT_RENAME, {"NAME": "server.json", "AFTER": True}, "new"),
    "audit-done-line-torn": (KILL_AT_FSYNC_OF, {"SUFFIX": "audit.jsonl", "NTH": 2,
                                                "CUT": 9}, "new"),
}


@pytest.fixture
def promoted(tmp_path, workspace) -> Registry:
    """v0001 serves `server`; v0002 is registered, not promoted."""
    reg = Registry(tmp_path / "registry")
    for seed in (0, 1):
        ws = workspace(seed)
        reg.register(ws["checkpoint"], [ws["onnx"]])
    reg.promote("v0001", "server")
    return reg


@pytest.mark.parametrize("point", sorted(PROMOTION_KILLS))
def test_kill_mid_promotion_leaves_old_or_new_pointer(promoted, point):
    patch, names, survivor = PROMOTION_KILLS[point]
    reg = promoted
    run_killed(patch, "registry", "promote", "v0002", "--deployment", "server",
               "--registry", reg.path, **names)
    raw = (reg.path / "deployments" / "server.json").read_text()
    pointer = json.loads(raw)  # never half a file
    assert pointer == reg.pointer("server")
    assert pointer["version"] == {"old": "v0001", "new": "v0002"}[survivor]
    visible = [p.name for p in (reg.path / "deployments").iterdir()
               if not p.name.startswith(".")]
    assert visible == ["server.json"]
    # The audit reads (a torn line is reported, not raised) and shows the interrupted change.
    entries = reg.audit()
    torn = [e for e in entries if "unreadable" in e]
    assert len(torn) == (1 if "torn" in point else 0)
    started = [e for e in entries if e.get("action") == "promote" and e.get("phase") ==
               "started" and e.get("version") == "v0002"]
    assert len(started) == (0 if point == "audit-started-line-torn" else 1)
    # Usable afterwards: promote, roll back, and the temporaries left by the kill are gone.
    target = "v0001" if survivor == "new" else "v0002"
    assert reg.promote(target, "server")["version"] == target
    assert reg.rollback("server")["version"] == pointer["version"]
    assert not list((reg.path / "deployments").glob(".*"))
    assert reg.audit()[-1]["phase"] == "done"
    assert len([e for e in reg.audit() if "unreadable" in e]) == len(torn)


@pytest.mark.parametrize("patch, names", [
    (KILL_AT_FSYNC_OF, {"SUFFIX": "version.json", "NTH": 1, "CUT": 0}),
    (KILL_AT_FSYNC_OF, {"SUFFIX": "model.safetensors", "NTH": 1, "CUT": 100}),
    (KILL_AT_RENAME, {"NAME": "v0003", "AFTER": False}),
], ids=["at-version-json", "mid-copy", "before-rename"])
def test_kill_mid_register_leaves_no_half_version(promoted, workspace, patch, names):
    reg = promoted
    ws = workspace(2)
    run_killed(patch, "registry", "add", ws["checkpoint"], "--artifact", ws["onnx"],
               "--registry", reg.path, **names)
    assert [v.id for v in reg.versions()] == ["v0001", "v0002"]
    assert list((reg.path / "versions").glob(".staging-*"))  # left for the next writer
    again = reg.register(ws["checkpoint"], [ws["onnx"]])
    assert again.id == "v0003" and reg.verify(again.id) == []
    assert not list((reg.path / "versions").glob(".staging-*"))
    started = [e for e in reg.audit() if e.get("action") == "register"
               and e.get("phase") == "started"]
    assert len(started) == 4  # two setups, the killed one, the one after
