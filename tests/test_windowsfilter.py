"""The windowsfilter driver: Windows layers imported, viewed, changed and re-exported on Linux."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from graphdriver.diff.changes import Change, ChangeKind
from graphdriver.drivers import windowsfilter
from graphdriver.errors import (
    ArchiveError,
    CorruptArchive,
    GraphDriverError,
    IntegrityError,
    InvalidArgument,
    Precondition,
    Unsupported,
)
from graphdriver.layerio.entry import TarEntry
from graphdriver.layerio.tarstream import TarReader
from graphdriver.layerio.windows import layer as winlayer
from graphdriver.layerio.windows import sddl, winmeta, wintar
from graphdriver.store import content
from graphdriver.store.layers import Store, StoreOptions
from graphdriver.testing import wingen
from tests.conftest import CORPUS, needs_root

A, C, X = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


@pytest.fixture
def wstore(tmp_path: Path):
    s = Store(StoreOptions(root=str(tmp_path / "root"), run_root=str(tmp_path / "run"),
                           driver="windowsfilter"))
    yield s
    for record in s.layers():
        while s.driver.mount_count(record.id) > 0:
            s.driver.put(record.id)


def diff_bytes(store: Store, layer_id: str, parent: str | None = None) -> bytes:
    out = io.BytesIO()
    store.diff(layer_id, out, parent)
    return out.getvalue()


def entries_of(data: bytes) -> list[TarEntry]:
    return list(TarReader(io.BytesIO(data)))


def changes_of(store: Store, layer_id: str) -> list[tuple[ChangeKind, str]]:
    return [(c.kind, c.path) for c in store.changes(layer_id)]


def import_entries(store: Store, layer_id: str, entries, parent=None):
    return store.import_layer(layer_id, parent, io.BytesIO(wingen.layer_tar(entries)))


# ----- the format ----------------------------------------------------------------------------------


def test_names_and_tombstones():
    assert wintar.split_stream("Files/a.txt:Zone.Identifier") == ("Files/a.txt", "Zone.Identifier")
    assert wintar.split_stream("Files/a.txt") == ("Files/a.txt", None)
    wintar.check_tombstone("Files/x")
    wintar.check_tombstone("UtilityVM/Files/x/y")
    for bad in ("Hives/Sam_Delta", "UtilityVM/x", "Files", "Other/x"):
        with pytest.raises(ArchiveError, match="invalid tombstone"):
            wintar.check_tombstone(bad)


@pytest.mark.parametrize("ns", [0, 1, 1_575_700_977_123_456_700, -1_500_000_000, -1])
def test_pax_times_round_trip(ns):
    assert wintar.parse_pax_time(wintar.format_pax_time(ns)) == ns
    assert wintar.format_pax_time(ns).encode() == wingen.pax_time(ns) or ns < 0


def test_metadata_defaults_and_errors():
    assert wintar.meta_from_entry(TarEntry("Files/d", type="5")).attributes == wintar.FILE_ATTRIBUTE_DIRECTORY
    assert wintar.meta_from_entry(TarEntry("Files/f")).attributes == 0
    legacy = TarEntry("Files/f", xattrs={"MSWINDOWS.fileattr": b"34", "MSWINDOWS.sd": b"O:BAG:SY"})
    meta = wintar.meta_from_entry(legacy)
    assert (meta.attributes, meta.sddl) == (34, "O:BAG:SY")
    for key, value in (("MSWINDOWS.fileattr", b"x1"), ("MSWINDOWS.rawsd", b"!!"),
                       ("LIBARCHIVE.creationtime", b"1.2.3")):
        with pytest.raises(CorruptArchive):  # malformed PAX records: exit 6, as any corrupt header
            wintar.meta_from_entry(TarEntry("Files/f", pax={key: value}))


def _sd_with(**fields: int) -> bytes:
    """wingen's directory descriptor with header fields replaced (offsets, revision)."""
    import struct

    names = ("revision", "sbz1", "control", "owner", "group", "sacl", "dacl")
    header = dict(zip(names, struct.unpack_from("<BBHIIII", wingen.DIR_SD), strict=True))
    header.update(fields)
    return struct.pack("<BBHIIII", *(header[n] for n in names)) + wingen.DIR_SD[20:]


_SIZE = len(wingen.DIR_SD)
_BAD_SDS = {
    "6 bytes": (b"\x01\x00\x04\x80\x14\x00", "shorter than its 20-byte header"),
    "header only": (wingen.DIR_SD[:20], "its owner at offset"),
    "owner past the end": (_sd_with(owner=_SIZE), "its owner at offset"),
    "group's SID cut": (wingen.DIR_SD[:-4], "its group at offset"),
    "SACL past the end": (_sd_with(sacl=_SIZE - 4), "its SACL at offset"),
    "DACL larger than the rest": (_sd_with(dacl=_SIZE - 12), "its DACL at offset"),
    "offset into the header": (_sd_with(owner=4), "points into its header"),
    "revision 2": (_sd_with(revision=2), "revision 2"),
    "not self-relative": (_sd_with(control=0x0404), "not self-relative"),
}


@pytest.mark.parametrize("case", sorted(_BAD_SDS))
def test_a_truncated_or_malformed_security_descriptor_is_refused(wstore, case):
    """``MSWINDOWS.rawsd`` must be a whole self-relative descriptor, or the layer would
    re-export (and Windows read) a descriptor that points past its end: corrupt data (exit 6)."""
    sd, why = _BAD_SDS[case]
    with pytest.raises(CorruptArchive, match="invalid security descriptor") as refused:
        import_entries(wstore, "bad", [wingen.WinDir("Files"), wingen.WinFile("Files/f.txt", b"x", sd=sd)])
    assert why in str(refused.value) and refused.value.exit_code == 6
    assert not wstore.exists("bad")
    for good in (wingen.DIR_SD, wingen.FILE_SD, wintar.DEFAULT_ROOT_SD.to_bytes()):
        wintar.check_security_descriptor(good)


def test_a_truncated_security_descriptor_is_one_line_exit_6(tmp_path):
    from tests.conftest import run_cli

    layer = wingen.layer_tar([wingen.WinDir("Files"),
                              wingen.WinFile("Files/f.txt", b"x", sd=base64.b64decode("AQAEgBQA"))])
    r = run_cli("import", "bad", "-", root=tmp_path / "s", driver="windowsfilter", input=layer)
    assert r.returncode == 6 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"MSWINDOWS.rawsd" in r.stderr



def pax_layer(*members: tuple[str, str, dict[str, str]], data: bytes = b"x") -> bytes:
    """A layer tarball as Python's tarfile writes one in PAX: ``(name, kind, records)`` with
    *kind* ``d`` (directory), ``f`` (file), ``s`` (symlink to ``f``) or ``h`` (hard link to
    ``Files/f``); times 1575700977."""
    out = io.BytesIO()
    types = {"d": tarfile.DIRTYPE, "f": tarfile.REGTYPE, "s": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, records in members:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.pax_headers = types[kind], 1575700977, dict(records)
            info.linkname = {"s": "f", "h": "Files/f"}.get(kind, "")
            info.size = len(data) if kind == "f" else 0
            tf.addfile(info, io.BytesIO(data) if kind == "f" else None)
    return out.getvalue()


_DIR, _FILE = {"MSWINDOWS.fileattr": "16"}, {"MSWINDOWS.fileattr": "32"}
_CONTRADICTIONS = {
    "a directory without 0x10": (("Files/d", "d", {"MSWINDOWS.fileattr": "32"}), "of a directory lacks"),
    "a directory of attributes 0": (("Files/d", "d", {"MSWINDOWS.fileattr": "0"}), "of a directory lacks"),
    "a file with 0x10": (("Files/g", "f", {"MSWINDOWS.fileattr": "48"}), "of a file has"),
    "a hard link with 0x10": (("Files/g", "h", {"MSWINDOWS.fileattr": "16"}), "of a file has"),
    "a file marked a junction": (("Files/g", "f", {**_FILE, "MSWINDOWS.mountpoint": "1"}), "not a symlink"),
    "a directory marked a junction": (("Files/d", "d", {**_DIR, "MSWINDOWS.mountpoint": "1"}),
                                      "not a symlink"),
}


@pytest.mark.parametrize("case", sorted(_CONTRADICTIONS))
def test_attributes_that_contradict_the_entry_type_are_a_corrupt_layer(tmp_path, case):
    """Windows sets FILE_ATTRIBUTE_DIRECTORY on every directory and on no file, and a junction
    is a symlink entry: an entry that says otherwise is corrupt (exit 6, one line, no layer)."""
    from tests.conftest import run_cli

    member, why = _CONTRADICTIONS[case]
    layer = pax_layer(("Files", "d", _DIR), ("Files/f", "f", _FILE), member)
    r = run_cli("import", "bad", "-", root=tmp_path / "s", driver="windowsfilter", input=layer)
    assert r.returncode == 6 and r.stderr.count(b"\n") == 1, r.stderr
    assert why.encode() in r.stderr and member[0].encode() in r.stderr, r.stderr
    assert run_cli("exists", "bad", root=tmp_path / "s", driver="windowsfilter").returncode == 3
    assert not (tmp_path / "s/windowsfilter/bad").exists()


def test_other_attribute_bits_are_taken_as_they_come(wstore):
    """Only the directory bit and the junction mark are held to the entry's type."""
    layer = pax_layer(("Files", "d", {"MSWINDOWS.fileattr": "18"}),  # hidden directory
                      ("Files/f", "f", {"MSWINDOWS.fileattr": "1056"}),  # archive, reparse point
                      ("Files/s", "s", {"MSWINDOWS.fileattr": "1040", "MSWINDOWS.mountpoint": "1"}),
                      ("Files/t", "s", {"MSWINDOWS.fileattr": "1056"}))  # a symlink to a file
    wstore.import_layer("ok", None, io.BytesIO(layer))
    records = winmeta.LayerMeta.load(wstore.driver.resolve("ok")).records
    attributes = [records[p].meta.attributes for p in ("Files", "Files/f", "Files/s", "Files/t")]
    assert attributes == [18, 1056, 1040, 1056]
    assert records["Files/s"].meta.mountpoint
    assert diff_bytes(wstore, "ok") == layer

def test_security_descriptor_inheritance():
    def inherit(parent_sd: bytes, is_dir: bool) -> wintar.SecurityDescriptor:
        return wintar.parse_security_descriptor(wintar.inherit_security_descriptor(parent_sd, is_dir=is_dir))

    parent = wintar.parse_security_descriptor(wingen.DIR_SD)
    child_file, child_dir = inherit(wingen.DIR_SD, False), inherit(wingen.DIR_SD, True)
    assert child_file.owner == parent.owner and child_file.group == parent.group
    assert [a[1] for a in child_file.dacl] == [wintar.INHERITED_ACE] * 4
    assert [a[1] for a in child_dir.dacl] == [0x13] * 4  # OI|CI passed on, inherited
    assert [a[4:] for a in child_file.dacl] == [a[4:] for a in parent.dacl]  # masks and SIDs kept
    # A file inheriting from a file-level descriptor (nothing inheritable) gets the default.
    fallback = inherit(wingen.FILE_SD, False)
    assert wintar.sid_string(fallback.owner) == "S-1-5-32-544"
    assert len(fallback.dacl) == 3
    assert wintar.inherit_security_descriptor(b"garbage", is_dir=True) == wintar.inherit_security_descriptor(
        None, is_dir=True)


def test_generator_is_a_plain_tar():
    data = wingen.layer_tar(wingen.base_layer())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members[wingen.LONG_NAME].size == len(b"<assembly/>\r\n")
    assert members["Files/Windows/System32/notepad.exe:Zone.Identifier"].isfile()
    assert members["UtilityVM/Files/License.txt"].islnk()
    assert members["Files"].pax_headers["MSWINDOWS.fileattr"] == "16"
    assert data[:512].startswith(b"PaxHeaders.0/Files\0")


# ----- import and exact re-export ----------------------------------------------------------------------


def test_base_layer_layout_and_exact_reexport(wstore):
    entries = wingen.base_layer()
    data = wingen.layer_tar(entries)
    record = wstore.import_layer("base", None, io.BytesIO(data))
    assert record.size == wingen.regular_size(entries)
    assert record.diff_digest == "sha256:" + hashlib.sha256(data).hexdigest()
    folder = Path(wstore.driver.resolve("base"))
    assert (folder / "layerchain.json").read_text() == "null"
    for sub in ("Files/Windows/System32", "Hives", "UtilityVM/Files/EFI/Microsoft/Boot"):
        assert (folder / sub).is_dir()
    files = {e.path: e for e in entries if isinstance(e, wingen.WinFile)}
    for path, backup in winlayer.MUTATED_FILES.items():
        assert (folder / backup).read_bytes() == files[path].data
    stream = folder / ".winmeta/streams/Files/Windows/System32/notepad.exe:Zone.Identifier"
    assert stream.read_bytes() == files["Files/Windows/System32/notepad.exe"].streams["Zone.Identifier"]
    assert os.path.samefile(folder / "UtilityVM/Files/License.txt", folder / "Files/License.txt")
    assert os.readlink(folder / "Files/Documents and Settings") == "C:\\Users"
    assert diff_bytes(wstore, "base") == data
    assert wstore.check() == [("base", None)]
    changes = changes_of(wstore, "base")
    assert all(kind is A for kind, _ in changes)
    # Every entry of the layer, each under its own name: the volume, the hives, the utility VM.
    named = {"/" + e.path for e in entries if not isinstance(e, wingen.Tombstone) and e.path != "Files"}
    implied = "/" + wingen.LONG_NAME.rpartition("/")[0]  # a folder only the path of a file names
    paths = [path for _, path in changes]
    assert set(paths) == named | {implied} and len(paths) == len(named) + 1
    assert paths == sorted(paths, key=lambda p: p.encode())



@pytest.mark.skipif(not shutil.which("tar-split"), reason="needs the tar-split tool")
def test_tar_split_asm_rebuilds_a_layer_from_its_folder_but_for_its_streams(wstore, tmp_path):
    """As the README says: the layer's folder holds every entry's data at its name but an
    alternate data stream's, kept in ``.winmeta/streams/``; ``tar-split asm`` rebuilds a layer
    without streams exactly and fails on one with a stream, which ``diff`` gives back exactly."""
    import dataclasses

    plain = [dataclasses.replace(e, streams={}) if isinstance(e, wingen.WinFile) else e
             for e in wingen.base_layer()]
    for layer_id, entries in (("plain", plain), ("streams", wingen.base_layer())):
        data = wingen.layer_tar(entries)
        wstore.import_layer(layer_id, None, io.BytesIO(data))
        meta = tmp_path / f"{layer_id}.gz"
        with open(meta, "wb") as f:
            wstore.tarsplit(layer_id, f)
        folder = wstore.layer(layer_id).metadata["dir"]
        r = subprocess.run(["tar-split", "asm", "--input", str(meta), "--path", folder, "--output",
                            str(tmp_path / f"{layer_id}.tar")], capture_output=True, check=False)
        if layer_id == "plain":
            assert r.returncode == 0 and (tmp_path / "plain.tar").read_bytes() == data, r.stderr
        else:
            assert r.returncode != 0 and b"notepad.exe:Zone.Identifier" in r.stderr, r.stderr
        assert diff_bytes(wstore, layer_id) == data

def test_metadata_is_kept(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    layer = winmeta.LayerMeta.load(wstore.driver.resolve("base"))
    hosts = layer.records["Files/Windows/System32/drivers/etc/hosts"]
    assert hosts.meta.attributes == wintar.FILE_ATTRIBUTE_ARCHIVE | wintar.FILE_ATTRIBUTE_READONLY
    assert hosts.meta.security_descriptor == wingen.FILE_SD
    assert hosts.meta.creation_ns == wingen.Times().creation
    assert hosts.ctime_ns == wingen.Times().change
    assert layer.records["Files/Documents and Settings"].meta.mountpoint
    assert layer.records["Files/Users/Public"].meta.eas == {"$KERNEL.PURGE.ESBCACHE": b"\x01\x00\x02\x03"}
    assert layer.streams["Files/Windows/System32/notepad.exe"] == ["Zone.Identifier"]
    assert layer.records["UtilityVM/Files/License.txt"].target == "Files/License.txt"


def test_check_finds_a_metadata_sidecar_cut_or_gone(wstore):
    """What the files cannot hold (attributes, descriptors, streams) is in the sidecar: export
    needs every line, so check reads it against the tarball's entries."""
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "child", wingen.child_layer(), "base")
    entries = Path(wstore.driver.resolve("child")) / ".winmeta" / "entries.ndjson"
    kept = entries.read_bytes()
    lines = kept.splitlines(keepends=True)
    entries.write_bytes(b"".join(lines[:-1]))
    (found,) = [why for lid, why in wstore.check() if lid == "child"]
    assert found is not None and "has no line for it" in found, found
    entries.unlink()
    (found,) = [why for lid, why in wstore.check() if lid == "child"]
    assert found is not None and "entries.ndjson) is missing" in found, found
    entries.write_bytes(kept)
    assert wstore.check() == [("base", None), ("child", None)]


def _plant(folder: Path, what: str) -> str:
    """Change the layer in *folder* behind the store's back; returns the path check must name."""
    if what == "a file in Files/":
        (folder / "Files/Windows/System32/evil.dll").write_bytes(b"MZ evil")
        return "Files/Windows/System32/evil.dll"
    if what == "a file in Hives/":
        (folder / "Hives/Evil_Delta").write_bytes(b"regf")
        return "Hives/Evil_Delta"
    if what == "a folder in Files/":
        (folder / "Files/Evil").mkdir()
        return "Files/Evil"
    if what == "a file's mode":
        os.chmod(folder / "Files/Windows/System32/app.dll", 0o4755)
        return "has mode 4755"
    if what == "a file's time":
        os.utime(folder / "Files/Windows/System32/drivers/etc/hosts", ns=(0, 0))
        return "Files/Windows/System32/drivers/etc/hosts"
    if what == "a symlink's target":
        link = folder / "Files/Documents and Settings"
        link.unlink()
        link.symlink_to("C:\\Evil")
        return "links to 'C:\\\\Evil'"
    entries = folder / ".winmeta/entries.ndjson"
    lines = entries.read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record["path"] == "Files/Windows/System32/drivers/etc/hosts":
            if what == "a line's attributes":
                record["attrs"] = wintar.FILE_ATTRIBUTE_HIDDEN | wintar.FILE_ATTRIBUTE_SYSTEM
            elif what == "a line's descriptor":
                record["sd"] = base64.b64encode(wingen.DIR_SD).decode()
            lines[i] = json.dumps(record)
    if what == "a line added":
        lines.append(json.dumps({"path": "Files/evil.txt", "kind": "deleted"}))
    entries.write_text("\n".join(lines) + "\n")
    return {"a line's attributes": "has attributes 0x6, its entry 0x20",
            "a line's descriptor": "has another security descriptor than its entry",
            "a line added": "'Files/evil.txt': line"}[what]


@pytest.mark.parametrize("what", ["a file in Files/", "a file in Hives/", "a folder in Files/",
                                  "a file's mode", "a file's time", "a symlink's target",
                                  "a line's attributes", "a line's descriptor", "a line added"])
def test_check_compares_the_files_and_their_metadata_with_the_tarball(wstore, what):
    """What ``changes``, the view and a regenerated diff would show differs from the imported
    tarball: check says so (exit 6, naming the layer and the first difference), as it does on
    vfs and overlay, though the rebuilt tarball still matches."""
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "child", wingen.child_layer(), "base")
    assert wstore.check() == [("base", None), ("child", None)]
    layer = "base" if what == "a symlink's target" else "child"
    named = _plant(Path(wstore.driver.resolve(layer)), what)
    (found,) = [why for lid, why in wstore.check() if lid == layer]
    assert found is not None and found.startswith("its files differ from its tarball"), found
    assert named in found, found


def test_check_of_a_planted_file_is_exit_6_naming_the_layer(tmp_path):
    from tests.conftest import run_cli

    root = tmp_path / "s"
    run_cli("import", "base", "-", root=root, driver="windowsfilter", check=True,
            input=wingen.layer_tar(wingen.base_layer()))
    assert run_cli("check", root=root).returncode == 0
    (root / "windowsfilter/base/Files/planted.txt").write_bytes(b"x")
    r = run_cli("check", root=root)
    assert r.returncode == 6, r.stdout + r.stderr
    assert b"base" in r.stdout + r.stderr and b"'Files/planted.txt'" in r.stdout + r.stderr


def test_child_layer(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    data = wingen.layer_tar(wingen.child_layer())
    record = wstore.import_layer("child", "base", io.BytesIO(data))
    assert record.size == wingen.regular_size(wingen.child_layer())
    folder = Path(wstore.driver.resolve("child"))
    assert json.loads((folder / "layerchain.json").read_text()) == [wstore.driver.resolve("base")]
    assert (folder / "Hives/Software_Delta").read_bytes().startswith(b"regf\x14")
    assert changes_of(wstore, "child") == [
        (X, "/Files/License.txt"),
        (C, "/Files/Windows"),
        (C, "/Files/Windows/System32"),
        (A, "/Files/Windows/System32/app.dll"),
        (C, "/Files/Windows/System32/drivers"),
        (C, "/Files/Windows/System32/drivers/etc"),
        (C, "/Files/Windows/System32/drivers/etc/hosts"),
        (X, "/Files/Windows/System32/empty.log"),
        (C, "/Hives"),
        (C, "/Hives/DefaultUser_Delta"),
        (C, "/Hives/Sam_Delta"),
        (C, "/Hives/Security_Delta"),
        (C, "/Hives/Software_Delta"),
        (C, "/Hives/System_Delta"),
    ]
    assert diff_bytes(wstore, "child") == data
    root = Path(wstore.mount("child"))
    try:
        assert not (root / "License.txt").exists()
        assert (root / "Windows/System32/drivers/etc/hosts").read_bytes().endswith(b"10.0.0.1 db\r\n")
        assert (root / "Windows/System32/notepad.exe").read_bytes().startswith(b"MZ")
        assert sorted(os.listdir(root)) == ["Documents and Settings", "ProgramData", "Users", "Windows"]
    finally:
        wstore.unmount("child")
    # The new and the changed file, and the registry deltas (as the seeds' DiffSize counts them).
    assert wstore.diff_size("child") == (len(b"MZ app" * 300) + len(b"127.0.0.1 localhost\r\n10.0.0.1 db\r\n")
                                         + 4 * 1024 + 5004)


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_store_mounts_its_own_layers(tmp_path, how):
    """layerchain.json names the ancestors' folders by absolute path: a store moved since still
    mounts, and a copy mounts its own layers, never the original store's."""
    import shutil

    old = Store(StoreOptions(root=str(tmp_path / "root"), run_root=str(tmp_path / "run"),
                             driver="windowsfilter"))
    import_entries(old, "base", wingen.base_layer())
    old.import_layer("child", "base", io.BytesIO(wingen.layer_tar(wingen.child_layer())))
    if how == "moved":
        shutil.move(tmp_path / "root", tmp_path / "elsewhere")
    else:
        subprocess.run(["cp", "-a", str(tmp_path / "root"), str(tmp_path / "elsewhere")], check=True)
        notepad = tmp_path / "root/windowsfilter/base/Files/Windows/System32/notepad.exe"
        notepad.write_bytes(b"the original store's")
    new = Store(StoreOptions(root=str(tmp_path / "elsewhere"), run_root=str(tmp_path / "run2")))
    root = Path(new.mount("child"))
    try:
        assert (root / "Windows/System32/notepad.exe").read_bytes().startswith(b"MZ")
    finally:
        new.unmount("child")
    assert new.check() == [("base", None), ("child", None)]


def test_bcd_rewritten_after_import_still_reexports(wstore):
    data = wingen.layer_tar(wingen.base_layer())
    wstore.import_layer("base", None, io.BytesIO(data))
    folder = Path(wstore.driver.resolve("base"))
    # What Windows' utility VM processing does to the store in place.
    (folder / wingen.BCD_DIR / "BCD").write_bytes(b"rewritten by the host" * 10)
    (folder / wingen.BCD_DIR / "BCD.LOG1").write_bytes(b"")
    assert diff_bytes(wstore, "base") == data
    assert wstore.check() == [("base", None)]
    # Any other file changed behind the store's back is caught.
    (folder / "Hives/Sam_Delta").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        diff_bytes(wstore, "base")


def test_compressed_import(wstore):
    import gzip

    data = wingen.layer_tar(wingen.base_layer())
    record = wstore.import_layer("base", None, io.BytesIO(gzip.compress(data)))
    assert record.diff_digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert diff_bytes(wstore, "base") == data


def test_corpus_image_imports_and_reexports(wstore, tmp_path):
    image = CORPUS / "windows" / "windows-mini-image.tar.gz"
    unpacked = tmp_path / "image"
    unpacked.mkdir()
    with tarfile.open(image) as tf:
        tf.extractall(unpacked, filter="data")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    parent = None
    for i, name in enumerate(manifest[0]["Layers"]):
        data = (unpacked / name).read_bytes()
        record = wstore.import_layer(f"layer{i}", parent, io.BytesIO(data))
        assert record.diff_digest == "sha256:" + hashlib.sha256(data).hexdigest()
        assert diff_bytes(wstore, f"layer{i}") == data
        parent = f"layer{i}"
    assert wstore.check() == [(f"layer{i}", None) for i in range(len(manifest[0]["Layers"]))]
    root = Path(wstore.mount(parent))
    try:
        assert (root / "License.txt").read_bytes().startswith(b"MICROSOFT SOFTWARE SUPPLEMENTAL LICENSE")
    finally:
        wstore.unmount(parent)
    # The trimmed image links to files it no longer holds: the links live on in the metadata.
    layer = winmeta.LayerMeta.load(wstore.driver.resolve("layer0"))
    assert layer.records["Files/Windows/System32/perfd009.dat"].dangling


def test_the_command_line_says_a_warning_as_its_other_lines_and_q_silences_it(tmp_path):
    """The trimmed image's dangling links are worth a line: ``graphdriver: ...`` on stderr,
    nothing with ``-q``."""
    from tests.conftest import run_cli

    image = CORPUS / "windows" / "windows-mini-image.tar.gz"
    with tarfile.open(image) as tf:
        tf.extractall(tmp_path / "image", filter="data")
    first = json.loads((tmp_path / "image/manifest.json").read_text())[0]["Layers"][0]
    layer = str(tmp_path / "image" / first)
    r = run_cli("import", "w1", layer, root=tmp_path / "s", driver="windowsfilter", check=True)
    lines = r.stderr.decode().splitlines()
    assert lines and all(line.startswith("graphdriver: ") for line in lines), lines
    assert any("a trimmed image?" in line for line in lines)
    r = run_cli("-q", "import", "w2", layer, root=tmp_path / "s", driver="windowsfilter", check=True)
    assert r.stderr == b""


@needs_root
def test_the_python_api_warns_of_links_to_files_no_layer_holds_through_logging_as_root(tmp_path):
    """The applying process is chrooted into the layer as root, where it can import nothing:
    the warning about a trimmed image's links reaches the ``graphdriver`` logger all the same,
    and the layer is imported, in a process that had not loaded :mod:`logging` before."""
    from tests.conftest import ROOT

    layer = tmp_path / "layer.tar"
    link = wingen.WinLink("Files/b.txt", "Files/gone.txt")
    layer.write_bytes(wingen.layer_tar([wingen.WinDir("Files"), link]))
    script = (
        "import sys\n"
        "import graphdriver\n"
        "assert 'logging' not in sys.modules\n"
        f"store = graphdriver.open_store({str(tmp_path / 'root')!r}, run_root={str(tmp_path / 'run')!r},"
        " driver='windowsfilter')\n"
        f"store.import_layer('w', None, open({str(layer)!r}, 'rb'))\n"
        "print([str(c) for c in store.changes('w')])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"['A /Files/b.txt']\n"
    assert b"1 hard links name files in no layer" in r.stderr


# ----- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["Hives/Sam_Delta", "UtilityVM/License.txt", "Files"])
def test_invalid_tombstone_refused(wstore, victim):
    import_entries(wstore, "base", wingen.base_layer())
    with pytest.raises(ArchiveError, match="invalid tombstone"):
        import_entries(wstore, "bad", [wingen.Tombstone(victim)], parent="base")
    assert not wstore.exists("bad")


def test_utility_vm_tombstone_accepted(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "top", [wingen.WinDir("UtilityVM"), wingen.WinDir("UtilityVM/Files"),
                                   wingen.Tombstone("UtilityVM/Files/License.txt")], parent="base")
    layer = winmeta.LayerMeta.load(wstore.driver.resolve("top"))
    assert "UtilityVM/Files/License.txt" in layer.tombstones



def test_a_tombstone_of_an_alternate_data_stream_is_a_corrupt_layer(wstore, tmp_path):
    """A stream travels inside its file's entry, never as an entry of its own (hcsshim hands
    file and streams to Windows as one backup stream), so a layer drops a stream by giving
    the file again without it; ``.wh.a.txt:Zone.Identifier`` is no deletion the format has,
    and the sidecar could not hold it: refused as corrupt (exit 6), not taken and ignored."""
    from tests.conftest import run_cli

    base = wingen.layer_tar([wingen.WinDir("Files"),
                             wingen.WinFile("Files/a.txt", b"hi", streams={"Zone.Identifier": b"zone"})])
    wstore.import_layer("base", None, io.BytesIO(base))
    with pytest.raises(CorruptArchive, match="tombstone of an alternate data stream") as refused:
        import_entries(wstore, "bad", [wingen.WinDir("Files"),
                                       wingen.Tombstone("Files/a.txt:Zone.Identifier")], parent="base")
    assert refused.value.exit_code == 6 and not wstore.exists("bad")
    with pytest.raises(ArchiveError, match="':' in a directory name"):  # a stream is no folder either
        import_entries(wstore, "bad", [wingen.WinDir("Files"), wingen.Tombstone("Files/a.txt:s/x")],
                       parent="base")
    assert not wstore.exists("bad")
    layer = wingen.layer_tar([wingen.WinDir("Files"), wingen.Tombstone("Files/a.txt:Zone.Identifier")])
    r = run_cli("import", "bad", "--parent", "base", "-", root=Path(wstore.root), driver="windowsfilter",
                input=layer)
    assert r.returncode == 6 and r.stderr.count(b"\n") == 1, r.stderr
    assert run_cli("exists", "bad", root=Path(wstore.root), driver="windowsfilter").returncode == 3
    assert run_cli("diff", "base", root=Path(wstore.root), driver="windowsfilter").stdout == base

def test_changes_and_diffsize_name_the_hives_and_the_utility_vm(wstore):
    """The seeds' Changes is every entry of the layer's export, each under its own name
    (``Hives/...``, ``UtilityVM/...`` besides ``Files/...``), and their DiffSize is the size of
    the files that list names: a layer's registry deltas and utility VM count."""
    base = wingen.base_layer()
    import_entries(wstore, "base", base)
    # Every file of the base layer, hard links between Files/ and UtilityVM/Files/ once:
    # what importing it returned.
    assert wstore.diff_size("base") == wingen.regular_size(base) == wstore.record("base").size
    delta = b"regf" + b"\x21" * 3000
    child = [
        wingen.WinDir("Files"),
        wingen.WinFile("Files/new.txt", b"n" * 10),
        wingen.WinDir("Hives"),
        wingen.WinFile("Hives/Software_Delta", delta),
        wingen.WinDir("UtilityVM"),
        wingen.WinDir("UtilityVM/Files"),
        wingen.Tombstone("UtilityVM/Files/License.txt"),  # there below: a deletion
        wingen.Tombstone("UtilityVM/Files/ghost.sys"),  # in no layer: nothing deleted
        wingen.WinLink("UtilityVM/Files/new.txt", "Files/new.txt"),
        wingen.WinFile("UtilityVM/Files/uvm.sys", b"u" * 300),
    ]
    data = wingen.layer_tar(child)
    wstore.import_layer("child", "base", io.BytesIO(data))
    assert changes_of(wstore, "child") == [
        (A, "/Files/new.txt"),
        (C, "/Hives"),
        (C, "/Hives/Software_Delta"),
        (C, "/UtilityVM"),
        (C, "/UtilityVM/Files"),
        (X, "/UtilityVM/Files/License.txt"),
        (A, "/UtilityVM/Files/new.txt"),
        (A, "/UtilityVM/Files/uvm.sys"),
    ]
    assert wstore.diff_size("child") == 10 + len(delta) + 300 == wstore.record("child").size
    assert diff_bytes(wstore, "child") == data
    # Against another tree than its parent's (here the empty one) only the views compare: Files/ alone.
    kinds = {c.path: c.kind for c in content.changes(wstore.driver, "child", None)}
    assert "/Files/new.txt" in kinds and not any(p.startswith(("/Hives", "/UtilityVM")) for p in kinds)


#: A file below and the same path again in a child, same bytes, size and times: (what the
#: file below has, what the child's has, the PAX record and value the child's re-export holds).
_OTHER_METADATA_ALONE = {
    "attributes": ({}, {"attrs": 0x26}, "MSWINDOWS.fileattr", b"38"),
    "descriptor": ({}, {"sd": wingen.DIR_SD}, "MSWINDOWS.rawsd", base64.b64encode(wingen.DIR_SD)),
    "extended attribute": ({}, {"eas": {"NOTE": b"x"}}, "MSWINDOWS.xattr.NOTE", base64.b64encode(b"x")),
    "stream bytes": ({"streams": {"s": b"one"}}, {"streams": {"s": b"two"}}, None, None),
    "stream added": ({}, {"streams": {"s": b"one"}}, None, None),
}


@pytest.mark.parametrize("what", sorted(_OTHER_METADATA_ALONE))
def test_a_file_given_other_windows_metadata_alone_is_changed(wstore, what):
    """Same bytes, size and times, and other attributes (``MSWINDOWS.fileattr`` 0x26 instead of
    32), descriptor, EAs or streams: the layer changed the file, as the seeds' Changes (every
    entry of the layer's own reader) names it, and its re-export carries the new metadata."""
    below, mine, record, value = _OTHER_METADATA_ALONE[what]
    data = b"hello windows\n"
    top = [wingen.WinDir("Files"), wingen.WinDir("Files/a")]
    import_entries(wstore, "base", [*top, wingen.WinFile("Files/a/hello.txt", data, **below)])
    import_entries(wstore, "child", [*top, wingen.WinFile("Files/a/hello.txt", data, **mine)], parent="base")
    import_entries(wstore, "same", [*top, wingen.WinFile("Files/a/hello.txt", data, **below)], parent="base")
    assert changes_of(wstore, "child") == [(C, "/Files/a"), (C, "/Files/a/hello.txt")]
    assert wstore.diff_size("child") == len(data)
    assert changes_of(wstore, "same") == [] and wstore.diff_size("same") == 0
    out = io.BytesIO()
    wstore.diff("child", out, regenerate=True)
    entries = {e.name: e for e in entries_of(out.getvalue())}
    assert "Files/a/hello.txt" in entries
    if record is not None:
        assert entries["Files/a/hello.txt"].pax[record] == value
    else:
        assert "Files/a/hello.txt:s" in entries  # the stream follows its file


@pytest.mark.parametrize("privileged", [pytest.param(True, marks=needs_root), False])
def test_a_tombstone_of_what_a_layer_below_deleted_already_is_no_change(wstore, privileged):
    """A deletion of a path a layer between deleted already hides nothing: the view is the
    same with it or without it, so the layer's changes do not list it (as they do not list a
    deletion of a name no layer ever had), whether a whiteout device or only the metadata
    records the lower deletion."""
    wstore.driver.privileged = privileged
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "mid", [wingen.WinDir("Files"), wingen.Tombstone("Files/ProgramData"),
                                   wingen.Tombstone("Files/Windows/System32/drivers")], parent="base")
    data = wingen.layer_tar([
        wingen.WinDir("Files"),
        wingen.Tombstone("Files/ProgramData"),  # deleted by mid already
        wingen.Tombstone("Files/Windows/System32/drivers/etc/hosts"),  # below a folder mid deleted
        wingen.Tombstone("Files/License.txt"),  # there below: deleted here
    ])
    wstore.import_layer("top", "mid", io.BytesIO(data))
    assert [c for c in changes_of(wstore, "top") if c[0] is X] == [(X, "/Files/License.txt")]
    assert diff_bytes(wstore, "top") == data  # the tarball keeps its tombstones
    assert wstore.diff_size("top") == 0


@pytest.mark.parametrize("privileged", [pytest.param(True, marks=needs_root), False])
def test_a_file_made_again_over_what_a_layer_below_deleted_is_added(wstore, privileged):
    """Without root a deletion lives in the metadata alone (no whiteout device): a file a
    layer makes again where a layer between deleted it is added, as with root, not changed."""
    wstore.driver.privileged = privileged
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "mid", [wingen.WinDir("Files"), wingen.Tombstone("Files/License.txt"),
                                   wingen.Tombstone("Files/Windows/System32/drivers")], parent="base")
    import_entries(wstore, "top", [
        wingen.WinDir("Files"), wingen.WinFile("Files/License.txt", b"again"),
        wingen.WinDir("Files/Windows"), wingen.WinDir("Files/Windows/System32"),
        wingen.WinDir("Files/Windows/System32/drivers"),
        wingen.WinFile("Files/Windows/System32/drivers/new.sys", b"n")], parent="mid")
    assert changes_of(wstore, "top") == [
        (A, "/Files/License.txt"),
        (C, "/Files/Windows"),
        (C, "/Files/Windows/System32"),
        (A, "/Files/Windows/System32/drivers"),
        (A, "/Files/Windows/System32/drivers/new.sys"),
    ]


def _plain_tar(*members: tuple[str, bytes, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return raw.getvalue()


@pytest.mark.parametrize("members", [
    [("etc/passwd", b"root:x:0:0", "")],  # not a Windows layer path
    [(".winmeta/entries.ndjson", b"{}", "")],  # the sidecar is never an archive's to write
    [("bcd.bak", b"evil", "")],
    [("Files/link", b"", "/"), ("Files/link/bcd.bak", b"evil", "")],  # no path goes through a symlink
    [("Files/link", b"", "/"), ("Files/link/.winmeta/x", b"evil", "")],
    [("Files/a:b/c", b"x", "")],  # ':' only ends a name (a stream)
    [("Files/orphan.txt:stream", b"x", "")],  # a stream without its file
    [("Files/Windows\\System32\\evil.dll", b"x", "")],  # Windows' separator: another place
    [("Files/.wh.a\\b", b"", "")],
])
def test_hostile_entries_refused(wstore, members):
    with pytest.raises(ArchiveError):
        wstore.import_layer("evil", None, io.BytesIO(_plain_tar(*members)))
    assert not wstore.exists("evil")
    assert [n for n in os.listdir(wstore.driver.home) if not n.startswith(".")] == []


@pytest.mark.parametrize("refused", [("etc/passwd", b"x", ""), ("../escape", b"x", "")])
def test_an_apply_whose_first_entry_is_refused_leaves_the_layer_as_it_was(wstore, refused):
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("sb", "base", writable=True)
    wstore.apply("sb", io.BytesIO(_plain_tar(("Files/kept.txt", b"kept", ""))))
    with pytest.raises(ArchiveError):
        wstore.apply("sb", io.BytesIO(_plain_tar(refused, ("Files/new.txt", b"new", ""))))
    assert wstore.layer("sb").damaged is None
    with pytest.raises(ArchiveError):
        wstore.apply("sb", io.BytesIO(_plain_tar(("Files/new.txt", b"new", ""), refused)))
    assert wstore.layer("sb").damaged


def test_an_apply_to_a_mounted_layer_is_refused_and_changes_nothing(wstore):
    """Refused before the record says an apply began: once unmounted, the layer is whole."""
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("sb", "base", writable=True)
    view = wstore.mount("sb")
    try:
        Path(view, "data.txt").write_bytes(b"keep")
        with pytest.raises(Precondition, match="is mounted"):
            wstore.apply("sb", io.BytesIO(_plain_tar(("Files/new.txt", b"new", ""))))
    finally:
        wstore.unmount("sb")
    assert wstore.layer("sb").damaged is None
    assert [str(c) for c in wstore.changes("sb")] == ["A /Files/data.txt"]


def test_hardlinks_outside_the_volumes_refused(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    with pytest.raises(ArchiveError, match="invalid hard link"):
        import_entries(wstore, "bad", [wingen.WinLink("Hives/x", "Hives/Sam_Delta")], parent="base")


def test_cross_layer_hardlink_copies_the_target(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "top", [wingen.WinLink("Files/copy.txt", "Files/License.txt")], parent="base")
    top = Path(wstore.driver.resolve("top"))
    base = Path(wstore.driver.resolve("base"))
    assert (top / "Files/copy.txt").read_bytes() == (base / "Files/License.txt").read_bytes()


@pytest.mark.parametrize("deleted_in", ["the same layer", "a layer between"])
def test_a_hardlink_to_a_deleted_file_is_dangling_never_a_tombstone_or_the_lower_file(wstore, deleted_in):
    """A link to a file its own layer (or one between) deleted links to nothing: kept as a
    dangling link as a trimmed image's, never as the tombstone nor the file copied from below."""
    import_entries(wstore, "base", wingen.base_layer())
    link = wingen.WinLink("Files/copy.txt", "Files/License.txt")
    if deleted_in == "the same layer":
        import_entries(wstore, "top", [wingen.Tombstone("Files/License.txt"), link], parent="base")
    else:
        import_entries(wstore, "mid", [wingen.Tombstone("Files/License.txt")], parent="base")
        import_entries(wstore, "top", [link], parent="mid")
    top = Path(wstore.driver.resolve("top"))
    assert not os.path.lexists(top / "Files/copy.txt")
    assert winmeta.LayerMeta.load(str(top)).records["Files/copy.txt"].dangling


def regenerated_changes(store: Store, layer_id: str) -> tuple[list[tuple[ChangeKind, str]], int]:
    """What a regenerated diff of the layer carries, as a change list would name it (each
    entry's path, a tombstone as a deletion, ``Files`` itself and streams left out: they are
    never listed), and the bytes of its regular files, as ``diffsize`` counts them."""
    out = io.BytesIO()
    store.diff(layer_id, out, regenerate=True)
    found, size = [], 0
    for e in entries_of(out.getvalue()):
        folder, _, base = e.name.rstrip("/").rpartition("/")
        if ":" in base or e.name.rstrip("/") == "Files":
            continue
        if base.startswith(".wh."):
            found.append((X, f"/{folder}/{base[4:]}"))
            continue
        found.append((A, "/" + e.name.rstrip("/")))
        if e.type == "0":
            size += e.size
    return sorted(found, key=lambda c: c[1]), size


def assert_commands_agree(store: Store, layer_id: str) -> None:
    """``changes`` names every path a regenerated diff carries (tombstones as deletions),
    and ``diffsize`` counts the bytes of its files."""
    listed = [((X if k is X else A), p) for k, p in changes_of(store, layer_id)]
    carried, size = regenerated_changes(store, layer_id)
    assert sorted(listed, key=lambda c: c[1]) == carried
    assert store.diff_size(layer_id) == size


def test_a_hard_link_to_a_file_no_layer_holds_is_listed_as_the_diff_carries_it(wstore, tmp_path):
    """A trimmed image's link to a file it no longer holds lives on in the metadata and goes
    out again in the layer's tarball, imported or regenerated: ``changes`` lists it there (added,
    or changed over a name the layers below show), under ``Files/`` and ``UtilityVM/Files/``
    alike, and ``diffsize`` counts no bytes for it."""
    from tests.conftest import run_cli

    solo = [wingen.WinDir("Files"), wingen.WinFile("Files/a.txt", b"a"),
            wingen.WinLink("Files/b.txt", "Files/missing.txt")]
    import_entries(wstore, "solo", solo)
    assert changes_of(wstore, "solo") == [(A, "/Files/a.txt"), (A, "/Files/b.txt")]
    assert_commands_agree(wstore, "solo")
    import_entries(wstore, "base", wingen.base_layer())
    child = [
        wingen.WinDir("Files"),
        wingen.WinLink("Files/License.txt", "Files/gone.txt"),  # over a file the base holds
        wingen.WinLink("Files/ghost.txt", "Files/Windows/gone.dll"),
        wingen.WinFile("Files/new.txt", b"n" * 10),
        wingen.Tombstone("Files/Windows/System32/empty.log"),  # then a link there: no deletion
        wingen.WinLink("Files/Windows/System32/empty.log", "Files/gone.log"),
        wingen.WinDir("UtilityVM"),
        wingen.WinDir("UtilityVM/Files"),
        wingen.WinLink("UtilityVM/Files/ghost.sys", "UtilityVM/Files/gone.sys"),
    ]
    import_entries(wstore, "child", child, parent="base")
    assert changes_of(wstore, "child") == [
        (C, "/Files/License.txt"),
        (C, "/Files/Windows/System32/empty.log"),
        (A, "/Files/ghost.txt"),
        (A, "/Files/new.txt"),
        (C, "/UtilityVM"),
        (C, "/UtilityVM/Files"),
        (A, "/UtilityVM/Files/ghost.sys"),
    ]
    assert wstore.diff_size("child") == 10
    assert_commands_agree(wstore, "child")
    assert wstore.check() == [("base", None), ("child", None), ("solo", None)]
    r = run_cli("changes", "solo", root=Path(wstore.root), driver="windowsfilter", check=True)
    assert r.stdout == b"A /Files/a.txt\nA /Files/b.txt\n"


def test_a_tombstone_of_what_no_layer_below_shows_is_in_neither_changes_nor_a_regenerated_diff(wstore):
    """Under ``UtilityVM/Files/`` as under ``Files/``, a tombstone of a name no layer below has
    deletes nothing: ``changes`` lists no deletion and a diff built from the files carries none,
    while the imported diff still gives it back."""
    import_entries(wstore, "base", wingen.base_layer())
    child = [
        wingen.WinDir("Files"),
        wingen.Tombstone("Files/ghost.sys"),
        wingen.Tombstone("Files/License.txt"),
        wingen.WinDir("UtilityVM"),
        wingen.WinDir("UtilityVM/Files"),
        wingen.Tombstone("UtilityVM/Files/ghost.sys"),
        wingen.Tombstone("UtilityVM/Files/License.txt"),
    ]
    data = wingen.layer_tar(child)
    wstore.import_layer("child", "base", io.BytesIO(data))
    assert changes_of(wstore, "child") == [
        (X, "/Files/License.txt"),
        (C, "/UtilityVM"),
        (C, "/UtilityVM/Files"),
        (X, "/UtilityVM/Files/License.txt"),
    ]
    assert_commands_agree(wstore, "child")
    assert diff_bytes(wstore, "child") == data


@needs_root
def test_a_hard_link_to_a_file_no_layer_holds_goes_with_the_folder_a_container_deletes(wstore):
    """A sandbox applied to keeps such a link in its sidecar; once a container deletes the folder
    it was in (or deletes it and makes it again), the link is gone with the folder's other files:
    ``changes`` lists it no more, and neither a regenerated diff nor ``diff`` carries it."""
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("sb", "base", writable=True)
    links = [wingen.WinDir("Files"), wingen.WinDir("Files/new"),
             wingen.WinLink("Files/new/a.txt", "Files/gone.txt"),
             wingen.WinLink("Files/Users/b.txt", "Files/gone.txt"),
             wingen.WinLink("Files/Windows/System32/c.txt", "Files/gone.txt"),
             wingen.WinLink("Files/kept.txt", "Files/gone.txt")]
    wstore.apply("sb", io.BytesIO(wingen.layer_tar(links)))
    root = Path(wstore.mount("sb"))
    try:
        shutil.rmtree(root / "new")
        shutil.rmtree(root / "Windows")
        shutil.rmtree(root / "Users")
        (root / "Users").mkdir()
    finally:
        wstore.unmount("sb")
    listed = changes_of(wstore, "sb")
    assert (A, "/Files/kept.txt") in listed and (X, "/Files/Windows") in listed
    assert not any(p.endswith(("a.txt", "b.txt", "c.txt")) for _, p in listed), listed
    assert_commands_agree(wstore, "sb")
    names = [e.name for e in entries_of(diff_bytes(wstore, "sb"))]
    assert "Files/kept.txt" in names and not any(n.endswith(("a.txt", "b.txt", "c.txt")) for n in names)


# ----- views, sandboxes and their diffs -------------------------------------------------------------


@needs_root
def test_views_read_only_for_images_writable_for_sandboxes(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    root = wstore.mount("base")
    try:
        with pytest.raises(OSError) as e:
            Path(root, "new.txt").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
    finally:
        wstore.unmount("base")
    wstore.create("ctr", "base", writable=True)
    root = wstore.mount("ctr")
    assert wstore.mount("ctr") == root
    try:
        Path(root, "new.txt").write_bytes(b"x")
    finally:
        wstore.unmount("ctr")
        wstore.unmount("ctr")
    assert wstore.driver.mount_count("ctr") == 0
    assert not os.path.ismount(root)



def _view_flags(path: str) -> tuple[bool, bool, set[str]]:
    """Whether the mount at *path* ignores setuid bits and device nodes, by ``statvfs`` and by
    its mountinfo options."""
    from graphdriver.fs import mounts

    flags = os.statvfs(path).f_flag
    info = mounts.mount_at(path)
    assert info is not None, path
    return bool(flags & os.ST_NOSUID), bool(flags & os.ST_NODEV), set(info.options.split(","))


@needs_root
def test_views_are_nosuid_and_nodev(wstore):
    """A hostile Windows layer's setuid-root file or device node is not live on the host:
    every view, read-only image view and container view, bind or overlay, is mounted nosuid
    and nodev; the bit is still there to see, and ``diff`` gives the same bytes."""
    layer = pax_layer(("Files", "d", {"MSWINDOWS.fileattr": "16"}),
                      ("Files/f", "f", {"MSWINDOWS.fileattr": "32"}), data=b"#!/bin/sh\nid -u\n")
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:  # the same layer, the file setuid root
        members = tf.getmembers()
        members[1].mode = 0o4755
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tw:
            for m in members:
                tw.addfile(m, tf.extractfile(m) if m.isfile() else None)
    layer = out.getvalue()
    wstore.import_layer("base", None, io.BytesIO(layer))
    import_entries(wstore, "child", [wingen.WinDir("Files"), wingen.WinFile("Files/g.txt", b"g")],
                   parent="base")
    wstore.create("top", None, writable=True)  # a sandbox without parent: a writable bind mount
    wstore.create("ctr", "child", writable=True)
    for layer_id in ("base", "child", "top", "ctr"):  # bind ro, overlay ro, bind rw, overlay rw
        root = wstore.mount(layer_id)
        try:
            nosuid, nodev, options = _view_flags(root)
            assert nosuid and nodev and {"nosuid", "nodev"} <= options, (layer_id, options)
            if layer_id in ("base", "child"):
                assert os.stat(os.path.join(root, "f")).st_mode & 0o7777 == 0o4755
            else:
                Path(root, "new.txt").write_bytes(b"new")
        finally:
            wstore.unmount(layer_id)
    assert diff_bytes(wstore, "base") == layer
    names = [e.name for e in entries_of(diff_bytes(wstore, "ctr"))]
    assert "Files/new.txt" in names and all("g.txt" not in n for n in names)

def test_a_layer_whose_files_folder_is_gone_is_damaged_and_removable(wstore):
    """Its record stands, its files do not: exit 6 naming it (as a layer whose whole folder went),
    not a raw "No such file or directory"; remove takes what is left."""
    import_entries(wstore, "base", wingen.base_layer())
    folder = Path(wstore.driver.resolve("base"))
    (folder / "Files").rename(folder / "Files.gone")
    for what in (lambda: wstore.mount("base"), lambda: wstore.changes("base"),
                 lambda: wstore.diff_size("base")):
        with pytest.raises(IntegrityError, match="files are missing"):
            what()
    wstore.remove("base")
    assert not wstore.exists("base") and not folder.exists()


@pytest.mark.parametrize("name", ["x:y", "d:/f"])
def test_a_name_with_a_colon_is_refused_by_diff_before_any_byte(wstore, name):
    """A Windows layer reads ``name:stream`` as an alternate data stream: a file so named
    could only come back as something else, so its tarball is refused whole."""
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("ctr", "base", writable=True)
    root = wstore.mount("ctr")
    try:
        Path(root, name).parent.mkdir(exist_ok=True)
        Path(root, name).write_bytes(b"x")
    finally:
        wstore.unmount("ctr")
    out = io.BytesIO()
    with pytest.raises(GraphDriverError, match="alternate data stream") as refused:
        wstore.diff("ctr", out)
    assert (refused.value.exit_code, out.getvalue()) == (1, b"")


def test_a_name_with_a_backslash_is_refused_by_diff_before_any_byte(wstore, tmp_path):
    """Windows reads ``\\`` as a path separator: a file so named would be written elsewhere
    (``Windows\\System32\\evil.dll`` into System32), so its tarball is refused whole."""
    from tests.conftest import run_cli

    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("ctr", "base", writable=True)
    root = wstore.mount("ctr")
    try:
        Path(root, "Windows\\System32\\evil.dll").write_bytes(b"MZ")
    finally:
        wstore.unmount("ctr")
    out = io.BytesIO()
    with pytest.raises(GraphDriverError, match="path separator") as refused:
        wstore.diff("ctr", out)
    assert (refused.value.exit_code, out.getvalue()) == (1, b"")
    r = run_cli("diff", "ctr", "-o", str(tmp_path / "out.tar"), root=Path(wstore.root))
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
    assert not (tmp_path / "out.tar").exists()



def _make_special(path: Path, kind: str) -> None:
    import socket
    import stat

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":  # bound from its folder: the whole path is longer than sun_path
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(path.parent)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)
        finally:
            os.fchdir(here)
            os.close(here)
    else:
        kind_bits = stat.S_IFCHR if kind == "character device" else stat.S_IFBLK
        os.mknod(path, 0o666 | kind_bits, os.makedev(1, 3))


@needs_root
@pytest.mark.parametrize("kind", ["fifo", "character device", "block device", "socket"])
def test_a_special_file_in_a_container_is_refused_by_diff_before_any_byte(wstore, tmp_path, kind):
    """A Windows layer holds files, directories and symlinks: a FIFO, a device or a socket a
    container made has no entry there.  ``changes`` lists it (it changed); ``diff`` refuses the
    whole tarball (exit 1, one line naming it) rather than hold less than ``changes`` says."""
    from tests.conftest import run_cli

    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("ctr", "base", writable=True)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "ok.txt").write_bytes(b"x")
        _make_special(root / "Users/special", kind)
    finally:
        wstore.unmount("ctr")
    assert (A, "/Files/Users/special") in changes_of(wstore, "ctr")
    out = io.BytesIO()
    says = f"(?i)is a {kind}, which a Windows layer cannot hold"
    with pytest.raises(GraphDriverError, match=says) as refused:
        wstore.diff("ctr", out)
    assert (refused.value.exit_code, out.getvalue()) == (1, b"")
    assert "/Files/Users/special" in str(refused.value)
    r = run_cli("diff", "ctr", root=Path(wstore.root), driver="windowsfilter")
    assert (r.returncode, r.stdout, r.stderr.count(b"\n")) == (1, b"", 1), r.stderr
    r = run_cli("diff", "ctr", "-o", str(tmp_path / "out.tar"), root=Path(wstore.root),
                driver="windowsfilter")
    assert r.returncode == 1 and not (tmp_path / "out.tar").exists()
    # Against another parent (two views compared, not the layer's own folder): refused too.
    with pytest.raises(GraphDriverError, match="cannot hold"):
        wstore.diff("ctr", io.BytesIO(), None)


@needs_root
def test_container_commit_of_a_special_file_is_refused_and_makes_no_image(tmp_path):
    from tests.conftest import run_cli
    from tests.test_images import oci_layout

    store = tmp_path / "store"

    def gd(*args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, root=store, driver="windowsfilter")

    oci_layout(tmp_path / "in", [wingen.layer_tar(wingen.base_layer())], name="localhost/win:1",
               os_name="windows")
    assert gd("image", "load", str(tmp_path / "in")).returncode == 0
    assert gd("container", "create", "localhost/win:1", "web").returncode == 0
    root = gd("mount", "web").stdout.decode().strip()
    os.mkfifo(os.path.join(root, "pipe"))
    assert gd("unmount", "web").returncode == 0
    r = gd("container", "commit", "web", "localhost/web:1")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"/Files/pipe" in r.stderr, r.stderr
    assert b"localhost/web" not in gd("image", "ls").stdout

def test_a_hard_link_to_a_name_with_a_backslash_is_refused(wstore):
    entries = [wingen.WinDir("Files"), wingen.WinFile("Files/a.txt", b"x"),
               wingen.WinLink("Files/b.txt", "Files/x\\..\\a.txt")]
    with pytest.raises(ArchiveError, match="path separator"):
        import_entries(wstore, "bad", entries)
    assert not wstore.exists("bad")


@needs_root
def test_sandbox_exports_windows_format(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("ctr", "base", writable=True)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "Windows/System32/new.txt").write_bytes(b"hello from linux\n")
        (root / "Program Files/App").mkdir(parents=True)
        (root / "Program Files/App/app.cfg").write_bytes(b"x=1\n")
        with open(root / "Windows/System32/notepad.exe", "ab") as f:
            f.write(b"patched")
        (root / "License.txt").unlink()
    finally:
        wstore.unmount("ctr")
    data = diff_bytes(wstore, "ctr")
    entries = {e.name: e for e in entries_of(data)}
    assert all(n.startswith("Files/") for n in entries)
    assert "Files/.wh.License.txt" in entries
    for name, e in entries.items():
        if ".wh." not in name and ":" not in name:
            assert wintar.FILEATTR in e.pax and wintar.RAWSD in e.pax, name
            assert e.atime_ns is not None and e.ctime_ns is not None
    meta = {n: wintar.meta_from_entry(e) for n, e in entries.items()}
    assert meta["Files/Program Files"].attributes == wintar.FILE_ATTRIBUTE_DIRECTORY
    assert meta["Files/Windows/System32/new.txt"].attributes == wintar.FILE_ATTRIBUTE_ARCHIVE
    # A new file inherits from its directory; a changed one keeps its own descriptor and streams.
    assert meta["Files/Windows/System32/new.txt"].security_descriptor == wintar.inherit_security_descriptor(
        wingen.DIR_SD, is_dir=False)
    assert meta["Files/Windows/System32/notepad.exe"].security_descriptor == wingen.FILE_SD
    assert "Files/Windows/System32/notepad.exe:Zone.Identifier" in entries
    # Applied on the base again, the diff gives the same view and the same changes.
    wstore.import_layer("copy", "base", io.BytesIO(data))
    assert wstore.changes("copy") == wstore.changes("ctr")
    copy = Path(wstore.mount("copy"))
    try:
        assert (copy / "Program Files/App/app.cfg").read_bytes() == b"x=1\n"
        assert (copy / "Windows/System32/notepad.exe").read_bytes().endswith(b"patched")
        assert not (copy / "License.txt").exists()
    finally:
        wstore.unmount("copy")
    layer = winmeta.LayerMeta.load(wstore.driver.resolve("copy"))
    assert layer.streams["Files/Windows/System32/notepad.exe"] == ["Zone.Identifier"]


@needs_root
def test_a_new_file_inherits_from_a_directory_known_only_by_its_sddl(wstore):
    """Older archives give descriptors as SDDL text (MSWINDOWS.sd): a file a container creates
    below such a directory inherits its inheritable ACEs, as below a binary descriptor."""
    given = "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;CI;0x1301bf;;;BA)(A;OICIIO;GA;;;CO)(A;OI;0x1200a9;;;WD)"
    layer = [wingen.WinDir("Files"), wingen.WinDir("Files/Data", sddl=given)]
    data = wingen.layer_tar(layer)
    wstore.import_layer("base", None, io.BytesIO(data))
    assert diff_bytes(wstore, "base") == data  # the SDDL text is kept as given
    wstore.create("ctr", "base", writable=True)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "Data/new.txt").write_bytes(b"n")
        (root / "Data/sub").mkdir()
    finally:
        wstore.unmount("ctr")
    meta = {e.name: wintar.meta_from_entry(e) for e in entries_of(diff_bytes(wstore, "ctr"))}
    binary = sddl.to_binary(given)
    for name, is_dir in (("Files/Data/new.txt", False), ("Files/Data/sub", True)):
        assert meta[name].security_descriptor == wintar.inherit_security_descriptor(binary, is_dir=is_dir)
    new_file = wintar.parse_security_descriptor(meta["Files/Data/new.txt"].security_descriptor)
    assert wintar.sid_string(new_file.owner) == "S-1-5-32-544"
    assert [(a[1], wintar.sid_string(a[8:])) for a in new_file.dacl] == [
        (wintar.INHERITED_ACE, "S-1-5-18"), (wintar.INHERITED_ACE, "S-1-3-0"),
        (wintar.INHERITED_ACE, "S-1-1-0")]


@needs_root
def test_a_sandbox_exports_descriptors_known_by_their_sddl_as_rawsd(wstore):
    """backuptar writes a file's descriptor as binary (MSWINDOWS.rawsd); MSWINDOWS.sd, the
    SDDL text of older archives, is read only.  A folder a sandbox changed below, known by
    its SDDL, goes out as Docker would export it: rawsd, the same descriptor in binary.  An
    SDDL whose SACL cannot be carried over here stays the text, never a descriptor cut short."""
    given = "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1200a9;;;BU)"
    audited = given + "S:AI(AU;SAFA;FA;;;WD)"
    layer = [wingen.WinDir("Files"), wingen.WinDir("Files/Data", sddl=given),
             wingen.WinDir("Files/Audited", sddl=audited)]
    wstore.import_layer("base", None, io.BytesIO(wingen.layer_tar(layer)))
    wstore.create("ctr", "base", writable=True)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "Data/new.txt").write_bytes(b"n")
        (root / "Audited/new.txt").write_bytes(b"n")
    finally:
        wstore.unmount("ctr")
    entries = {e.name: e for e in entries_of(diff_bytes(wstore, "ctr"))}
    data = entries["Files/Data"]
    assert wintar.SDDL not in data.pax
    assert base64.b64decode(data.pax[wintar.RAWSD]) == sddl.to_binary(given)
    assert entries["Files/Audited"].pax[wintar.SDDL] == audited.encode()
    assert wintar.RAWSD not in entries["Files/Audited"].pax
    assert all(wintar.SDDL not in e.pax for n, e in entries.items() if n != "Files/Audited")


@needs_root
def test_a_sandbox_exports_a_descriptor_for_a_folder_imported_without_one(wstore):
    """Windows gives a file imported without a descriptor the one it inherits, and backuptar
    writes what a backup of it reads: a folder a sandbox changed below goes out with that
    descriptor (as MSWINDOWS.rawsd), as a new one would."""
    wstore.import_layer("base", None, io.BytesIO(wingen.layer_tar(
        [wingen.WinDir("Files", sd=None), wingen.WinDir("Files/Plain", sd=None)])))
    wstore.create("ctr", "base", writable=True)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "Plain/new.txt").write_bytes(b"n")
    finally:
        wstore.unmount("ctr")
    entries = {e.name: e for e in entries_of(diff_bytes(wstore, "ctr"))}
    top = wintar.inherit_security_descriptor(None, is_dir=True)  # Files/, under the default root
    folder = wintar.inherit_security_descriptor(top, is_dir=True)
    assert base64.b64decode(entries["Files/Plain"].pax[wintar.RAWSD]) == folder
    assert base64.b64decode(entries["Files/Plain/new.txt"].pax[wintar.RAWSD]) == \
        wintar.inherit_security_descriptor(folder, is_dir=False)


def test_sddl_reads_what_windows_writes_and_refuses_what_needs_windows():
    text = "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1200a9;;;BU)"
    default = wintar.SecurityDescriptor(wintar.SE_DACL_PROTECTED | wintar.SE_DACL_AUTO_INHERITED,
                                        wintar.SID_ADMINISTRATORS, wintar.SID_SYSTEM,
                                        wintar.DEFAULT_ROOT_SD.dacl)
    assert sddl.to_binary(text) == default.to_bytes()
    assert sddl.to_binary(" O:S-1-5-32-544 G:SY D:PAI (A;OICI;FA;;;SY) (A;OICI;FA;;;BA) "
                          "(A;OICI;FRFX;;;BU) S:(AU;SAFA;FA;;;WD)") == default.to_bytes()
    assert wintar.parse_security_descriptor(sddl.to_binary("D:NO_ACCESS_CONTROL")).dacl is None
    # A SACL is not read, so what only it may hold (resource attributes nest parentheses)
    # leaves the owner, group and DACL readable.
    for sacl in ('S:(RA;CI;;;;S-1-1-0;("Project",TS,0,"Windows","SQL"))',
                 'S:(RA;CI;;;;S-1-1-0;("Project",TS,0x0,"a)b"))',
                 'S:(XU;SA;FA;;;WD;(@User.Title=="PM" && (@User.Division=="Finance" || '
                 '@User.Division=="Sales")))'):
        assert sddl.to_binary(text + sacl) == default.to_bytes(), sacl
    for bad in ("O:DAG:DA", "D:(OA;;CR;00000000-0000-0000-0000-000000000000;;WD)", "D:(A;;FA;;;SY",
                "X:1", "D:(A;;ZZ;;;SY)", "O:S-1-x", "D:(A;XX;FA;;;SY)", "O:BAO:BA", "D:(A;;FA;;SY)",
                "D:(XA;;FR;;;WD;(Member_of {SID(BA)}))", "S:(RA;;;;;WD;(\"a)\",TS,0,\"b\")",
                'S:(RA;CI;;;;S-1-1-0;("open quote))'):
        with pytest.raises(ValueError):
            sddl.to_binary(bad)


@needs_root
def test_sandbox_without_parent_and_diff_against_other_parent(wstore):
    wstore.create("solo", writable=True)
    root = Path(wstore.mount("solo"))
    try:
        (root / "a.txt").write_bytes(b"a")
    finally:
        wstore.unmount("solo")
    assert changes_of(wstore, "solo") == [(A, "/Files/a.txt")]
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "child", wingen.child_layer(), parent="base")
    # Against the empty tree, the child's whole view is added.
    out = io.BytesIO()
    content.export(wstore.driver, "child", None, out)
    names = [e.name for e in entries_of(out.getvalue())]
    assert "Files/Windows/System32/notepad.exe" in names and "Files/License.txt" not in names
    assert not any(".wh." in n for n in names)
    # Against another layer than its parent, through the views.
    import_entries(wstore, "other", [wingen.WinDir("Files"), wingen.WinFile("Files/License.txt", b"x")])
    kinds = {c.path: c.kind for c in wstore.changes("child", "other")}
    assert kinds["/Files/License.txt"] is X and kinds["/Files/Windows"] is A


@needs_root
def test_mount_failure_unwinds(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "child", wingen.child_layer(), parent="base")
    base = Path(wstore.driver.resolve("base"))
    (base / "Files").rename(base / "Files.away")
    try:
        with pytest.raises(Exception):  # noqa: B017 - any mount failure will do
            wstore.mount("child")
        assert wstore.driver.mount_count("child") == 0
        assert not os.path.exists(os.path.join(wstore.driver.run_root, "views", "child"))
    finally:
        (base / "Files.away").rename(base / "Files")
    wstore.mount("child")
    wstore.unmount("child")


def test_apply_refused_while_mounted(wstore):
    wstore.create("l")
    wstore.mount("l")
    try:
        with pytest.raises(Precondition):
            wstore.apply("l", io.BytesIO(wingen.layer_tar(wingen.base_layer())))
    finally:
        wstore.unmount("l")


# ----- alternate ids, removal, cleanup --------------------------------------------------------------------


def test_alternate_layer_id(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    alias = Path(wstore.driver.home, "alias")
    alias.mkdir()
    (alias / "layerId").write_text("base")  # the seeds' writer spells it so
    assert wstore.driver.resolve("alias") == wstore.driver.resolve("base")
    path = wstore.driver.get("alias")
    assert wstore.driver.mount_count("base") == 1
    assert (Path(path) / "License.txt").exists()
    wstore.driver.put("base")


def test_remove_and_cleanup(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    home = Path(wstore.driver.home)
    wstore.remove("base")
    assert [n for n in os.listdir(home) if not n.startswith(".")] == []
    leftover = home / "old-removing"
    (leftover / "Files/x").mkdir(parents=True)
    (leftover / "Files/x/f").write_bytes(b"f")
    assert "removed interrupted removal old-removing" in wstore.cleanup()
    assert not leftover.exists()


@needs_root
def test_cleanup_reports_what_it_cannot_remove_yet(wstore, tmp_path):
    home = Path(wstore.driver.home)
    leftover = home / "busy-removing"
    (leftover / "m").mkdir(parents=True)
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(leftover / "m")], check=True)
    try:
        done = wstore.cleanup()
        assert any(line.startswith("could not remove busy-removing yet") for line in done), done
        assert leftover.exists()
    finally:
        subprocess.run(["umount", str(leftover / "m")], check=True)
    assert "removed interrupted removal busy-removing" in wstore.cleanup()


# ----- base images -----------------------------------------------------------------------------------


def _base_images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for folder, name, version in (("CN=Microsoft_NanoServer_10.0.17763.1", "NanoServer", "10.0.17763.1"),
                                  ("CN=Microsoft_WindowsServerCore_10.0.17763.1", "WindowsServerCore",
                                   "10.0.17763.1")):
        (images / folder / "Files/Windows").mkdir(parents=True)
        (images / folder / "Files/Windows/win.ini").write_bytes(name.encode())
        (images / folder / "UtilityVM/Files").mkdir(parents=True)
        (images / folder / "image.json").write_text(json.dumps({"name": name, "version": version}))
    return images


def test_base_images_registered(tmp_path):
    images = _base_images(tmp_path)
    store = Store(StoreOptions(root=str(tmp_path / "root"), run_root=str(tmp_path / "run"),
                               driver="windowsfilter", driver_options={"base_images": str(images)}))
    driver = store.driver
    infos = {i.name: i for i in driver.base_images()}
    nano = infos["NanoServer"]
    folder_name = "CN=Microsoft_NanoServer_10.0.17763.1"
    assert nano.id == hashlib.sha384(folder_name.encode()).digest()[:32].hex()
    assert nano.os_version == "10.0.17763"
    assert nano.os_features == () and infos["WindowsServerCore"].os_features == ("win32k",)
    assert nano.to_json()["OSFeatures"] == []
    assert (Path(driver.home, nano.id) / "layerID").read_text() == folder_name
    assert driver.resolve(nano.id) == os.path.join(driver.home, folder_name)
    assert {i.id for i in driver.base_images()} == {i.id for i in infos.values()}  # idempotent
    view = Path(driver.get(nano.id))
    try:
        assert (view / "Windows/win.ini").read_bytes() == b"NanoServer"
    finally:
        driver.put(nano.id)
    with pytest.raises(Precondition, match="base image"):
        driver.check_apply(nano.id)
    if os.geteuid() == 0:
        driver.create_rw("ctr", nano.id)
        assert driver.layer_chain("ctr") == [os.path.join(driver.home, folder_name)]
        view = Path(driver.get("ctr"))
        try:
            (view / "Windows/win.ini").write_bytes(b"changed")
        finally:
            driver.put("ctr")
        assert (images / folder_name / "Files/Windows/win.ini").read_bytes() == b"NanoServer"
        driver.remove("ctr")
    driver.remove(nano.id)
    assert not os.path.lexists(os.path.join(driver.home, folder_name))
    assert (images / folder_name / "Files/Windows/win.ini").exists()


def test_base_images_index_form(tmp_path):
    images = _base_images(tmp_path)
    (images / "images.json").write_text(json.dumps({"Images": [
        {"Name": "WindowsServerCore", "Version": "10.0.17763",
         "Path": "CN=Microsoft_WindowsServerCore_10.0.17763.1"},
    ]}))
    store = Store(StoreOptions(root=str(tmp_path / "root"), run_root=str(tmp_path / "run"),
                               driver="windowsfilter", driver_options={"base_images": str(images)}))
    [info] = store.driver.base_images()
    assert info.os_version == ""  # not major.minor.build.revision: reported, not guessed
    assert info.os_features == ("win32k",)


@pytest.mark.parametrize(("index", "why"), [
    ("[]", "images.json is not a JSON object"),
    ('"Images"', "images.json is not a JSON object"),
    ("{", "images.json is not JSON"),
    ('{"Images": {}}', "images.json has no Images list"),
    ('{"Images": [5]}', "image 1 of images.json is not a JSON object"),
    ('{"Images": [{"Name": "x"}]}', "image 1 of images.json has no Path"),
    ('{"Images": [{"Path": ""}]}', "image 1 of images.json has no Path"),
    ('{"Images": [{"Path": 7}]}', "its Path is not a string"),
    ('{"Images": [{"Path": "a\\u0000b"}]}', "its Path holds a NUL character"),
    ('{"Images": [{"Path": "CN=Microsoft_NanoServer_10.0.17763.1", "Name": ["n"]}]}',
     "its Name is not a string"),
    ('{"Images": [{"Path": "CN=Microsoft_NanoServer_10.0.17763.1", "Version": 10}]}',
     "its Version is not a string"),
    ('{"Images": [{"Path": "CN=Microsoft_NanoServer_10.0.17763.1", "Size": "1"}]}',
     "its Size is not a number of bytes"),
    ('{"Images": [{"Path": "CN=Microsoft_NanoServer_10.0.17763.1", "Size": true}]}',
     "its Size is not a number of bytes"),
    ('{"Images": [{"Path": "CN=Microsoft_NanoServer_10.0.17763.1", "CreatedTime": 1}]}',
     "its CreatedTime is not a string"),
])
def test_a_malformed_images_json_is_one_usage_error(tmp_path, index, why):
    from tests.conftest import run_cli

    images = _base_images(tmp_path)
    (images / "images.json").write_text(index)
    r = run_cli("--opt", f"base_images={images}", "base-images", root=tmp_path / "root",
                driver="windowsfilter")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(b"\n") == 1 and why in r.stderr.decode(), r.stderr


def test_a_malformed_image_json_is_one_usage_error(tmp_path):
    from tests.conftest import run_cli

    images = _base_images(tmp_path)
    (images / "CN=Microsoft_NanoServer_10.0.17763.1/image.json").write_text('{"name": "n", "path": 1}')
    r = run_cli("--opt", f"base_images={images}", "base-images", root=tmp_path / "root",
                driver="windowsfilter")
    assert r.returncode == 2 and b"its Path is not a string" in r.stderr and r.stderr.count(b"\n") == 1


# ----- options, probes, status ----------------------------------------------------------------------------


def test_unknown_options_and_sizes_refused(wstore, monkeypatch):
    with pytest.raises(InvalidArgument):
        wstore.create("l", size="1G")  # read-only layers have no size
    monkeypatch.setattr(windowsfilter, "_sizelimit", None)
    with pytest.raises(Unsupported, match="size limits"):
        wstore.create("rw", writable=True, size="1G")
    assert not wstore.exists("rw")


@needs_root
def test_size_limited_sandbox(wstore):
    if wstore.driver.size_method is None:
        pytest.skip("no size limits here")
    import_entries(wstore, "base", wingen.base_layer())
    wstore.create("ctr", "base", writable=True, size="64M")
    assert wstore.driver.metadata("ctr")["SizeLimit"] == str(64 << 20)
    root = Path(wstore.mount("ctr"))
    try:
        (root / "small.txt").write_bytes(b"fits")
        with pytest.raises(OSError) as e, open(root / "big.bin", "wb") as f:
            for _ in range(80):
                f.write(bytes(1 << 20))
        assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
        (root / "big.bin").unlink()
    finally:
        wstore.unmount("ctr")
    assert (A, "/Files/small.txt") in changes_of(wstore, "ctr")
    wstore.remove("ctr")


def test_status_and_probe(wstore, tmp_path, monkeypatch):
    status = dict(wstore.status())
    assert "Metadata" in status and ".winmeta" in status["Metadata"]
    assert status["Stream Files"]
    windowsfilter.probe_home(str(tmp_path / "elsewhere"))
    if os.geteuid() == 0:
        from graphdriver.fs import mounts

        fake = mounts.MountInfo.__new__(mounts.MountInfo)
        object.__setattr__(fake, "fstype", "overlay")
        monkeypatch.setattr(mounts, "filesystem_of", lambda path: fake)
        with pytest.raises(Unsupported, match="overlayfs"):
            windowsfilter.probe_home(str(tmp_path))


def test_unprivileged_views_are_copies(wstore):
    # What a user without root gets: no whiteout devices, views copied from the chain.
    wstore.driver.privileged = False
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "child", wingen.child_layer(), parent="base")
    child = Path(wstore.driver.resolve("child"))
    assert not (child / "Files/License.txt").exists()  # a tombstone in the sidecar only
    assert (X, "/Files/License.txt") in changes_of(wstore, "child")
    assert (X, "/Files/Windows/System32/empty.log") in changes_of(wstore, "child")
    root = Path(wstore.mount("child"))
    try:
        assert not os.path.ismount(root)
        assert not (root / "License.txt").exists()
        assert (root / "Windows/System32/app.dll").read_bytes().startswith(b"MZ app")
        assert (root / "Windows/System32/notepad.exe").exists()
    finally:
        wstore.unmount("child")
    assert not root.exists()
    wstore.create("ctr", "child", writable=True)
    with pytest.raises(Unsupported, match="need root"):
        wstore.mount("ctr")
    assert wstore.driver.mount_count("ctr") == 0


def test_records_this_code_does_not_know_survive(wstore):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        top = tarfile.TarInfo("Files")
        top.type = tarfile.DIRTYPE
        tf.addfile(top)
        info = tarfile.TarInfo("Files/f.txt")
        info.size = 4
        # A newer writer's record and a Linux xattr.
        info.pax_headers.update(
            {"MSWINDOWS.fileattr": "32", "MSWINDOWS.future": "42", "SCHILY.xattr.user.k": "v"}
        )
        tf.addfile(info, io.BytesIO(b"data"))
    wstore.import_layer("l", None, io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    content.export(wstore.driver, "l", None, out)  # written anew from the files and the sidecar
    exported = {e.name: e for e in entries_of(out.getvalue())}["Files/f.txt"]
    assert exported.pax["MSWINDOWS.future"] == b"42"
    assert exported.pax["MSWINDOWS.fileattr"] == b"32"
    assert exported.xattrs == {"user.k": b"v"}


@needs_root
def test_directory_made_again_after_its_tombstone_is_empty(wstore):
    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "top", [wingen.WinDir("Files"), wingen.Tombstone("Files/Windows/System32"),
                                   wingen.WinDir("Files/Windows/System32"),
                                   wingen.WinFile("Files/Windows/System32/only.dll", b"x")], parent="base")
    root = Path(wstore.mount("top"))
    try:
        assert os.listdir(root / "Windows/System32") == ["only.dll"]
    finally:
        wstore.unmount("top")
    changes = changes_of(wstore, "top")
    assert (X, "/Files/Windows/System32/notepad.exe") in changes
    assert (A, "/Files/Windows/System32/only.dll") in changes
    assert wstore.check() == [("base", None), ("top", None)]  # its opaque folder is the tarball's
    os.setxattr(Path(wstore.driver.resolve("top"), "Files/Windows"), "trusted.overlay.opaque", b"y")
    (found,) = [why for lid, why in wstore.check() if lid == "top"]
    assert found is not None and "'Files/Windows': is marked opaque" in found, found


@needs_root
def test_a_tombstone_makes_a_whiteout_only_where_something_below_shows(wstore):
    """A deletion of a name no lower layer shows (never there, or hidden already by a layer
    between) leaves no 0/0 device: the view would list it as an unreadable ``c?????????``."""
    import stat

    import_entries(wstore, "base", wingen.base_layer())
    import_entries(wstore, "mid", [wingen.WinDir("Files"), wingen.Tombstone("Files/ProgramData")],
                   parent="base")
    data = wingen.layer_tar([
        wingen.WinDir("Files"),
        wingen.Tombstone("Files/ghost"),  # in no layer
        wingen.Tombstone("Files/Nowhere/ghost"),  # under a folder no layer has
        wingen.Tombstone("Files/ProgramData"),  # deleted by mid already
        wingen.Tombstone("Files/License.txt"),  # there below: hidden by a whiteout
    ])
    wstore.import_layer("top", "mid", io.BytesIO(data))
    files = Path(wstore.driver.resolve("top")) / "Files"
    assert sorted(os.listdir(files)) == ["License.txt"]
    assert stat.S_ISCHR(os.lstat(files / "License.txt").st_mode)
    root = Path(wstore.mount("top"))
    try:
        assert "ghost" not in os.listdir(root) and "License.txt" not in os.listdir(root)
        assert not os.path.lexists(root / "ghost")
    finally:
        wstore.unmount("top")
    changes = changes_of(wstore, "top")
    assert (X, "/Files/License.txt") in changes
    assert not {"/Files/ghost", "/Files/Nowhere", "/Files/Nowhere/ghost"} & {path for _, path in changes}
    assert diff_bytes(wstore, "top") == data
    assert winmeta.LayerMeta.load(str(files.parent)).tombstones >= {"Files/ghost", "Files/ProgramData"}
    assert wstore.check() == [("base", None), ("mid", None), ("top", None)]


def test_base_images_cli(tmp_path):
    from tests.conftest import run_cli

    images = _base_images(tmp_path)
    root = tmp_path / "cli-root"
    args = ("--opt", f"base_images={images}", "base-images")
    first = run_cli(*args, "--json", root=root, driver="windowsfilter")
    assert first.returncode == 0, first.stderr
    listed = {i["Name"]: i for i in json.loads(first.stdout)}
    nano_id = hashlib.sha384(b"CN=Microsoft_NanoServer_10.0.17763.1").digest()[:32].hex()
    assert listed["NanoServer"]["ID"] == nano_id
    assert listed["WindowsServerCore"]["OSFeatures"] == ["win32k"]
    assert listed["NanoServer"]["OSVersion"] == "10.0.17763"
    again = run_cli(*args, "--json", root=root)  # registering twice changes nothing
    assert json.loads(again.stdout) == json.loads(first.stdout)
    layers = run_cli("--opt", f"base_images={images}", "layers", root=root).stdout.decode().split()
    assert sorted(layers) == sorted(i["ID"] for i in listed.values())
    text = run_cli(*args, root=root).stdout.decode().splitlines()
    assert any(line.startswith(nano_id + " NanoServer 10.0.17763.1 10.0.17763 - ") for line in text)
    # The images are layers: usable as parents, never removed by cleanup.
    assert run_cli("--opt", f"base_images={images}", "create", "ctr", "--parent", nano_id, "--rw",
                   root=root).returncode == 0
    run_cli("--opt", f"base_images={images}", "cleanup", root=root, check=True)
    assert (images / "CN=Microsoft_NanoServer_10.0.17763.1" / "Files/Windows/win.ini").exists()
    assert run_cli("--opt", f"base_images={images}", "exists", nano_id, root=root).returncode == 0
    wrong = run_cli("base-images", root=tmp_path / "vfs-root", driver="vfs")
    assert wrong.returncode == 7


def test_base_images_in_a_folder_that_is_not_there_is_one_plain_line(tmp_path):
    """A ``base_images`` folder that does not exist was told with Python's repr of the error
    (``[Errno 2] No such file or directory: '...'``): now the folder and the reason, exit 2."""
    from tests.conftest import run_cli

    missing = tmp_path / "nowhere"
    r = run_cli("--opt", f"base_images={missing}", "base-images", root=tmp_path / "root",
                driver="windowsfilter")
    said = f"graphdriver: base images in {missing}: No such file or directory\n"
    assert (r.returncode, r.stderr.decode()) == (2, said)


def test_status_with_base_images_of_a_store_not_made_yet(tmp_path):
    """A new store has no home yet: none registered, as status says without the option."""
    from tests.conftest import run_cli

    images = _base_images(tmp_path)
    root = tmp_path / "new-root"
    r = run_cli("--opt", f"base_images={images}", "status", root=root, driver="windowsfilter")
    assert r.returncode == 0, r.stderr
    assert f"{images} (0 registered)" in r.stdout.decode()
    assert not (root / "windowsfilter").exists()


def test_cleanup_keeps_a_base_image_whose_folder_name_ends_in_removing(tmp_path):
    """Its link in the home is named as an older store's leftover, but a record names it
    (through the base image's layerID file): never garbage, whatever its name."""
    from tests.conftest import run_cli

    images = tmp_path / "images"
    (images / "core-removing/Files/Windows").mkdir(parents=True)
    (images / "core-removing/Files/Windows/win.ini").write_bytes(b"core")
    (images / "core-removing/image.json").write_text(json.dumps({"name": "Core", "version": "10.0.17763.1"}))
    root = tmp_path / "cli-root"
    opt = ("--opt", f"base_images={images}")
    [core] = json.loads(run_cli(*opt, "base-images", "--json", root=root, driver="windowsfilter",
                                check=True).stdout)
    layer = wingen.layer_tar([wingen.WinDir("Files"), wingen.WinFile("Files/app.txt", b"app")])
    run_cli(*opt, "import", "app", "--parent", core["ID"], "-", root=root, input=layer, check=True)
    done = run_cli(*opt, "cleanup", root=root, check=True).stdout.decode()
    assert "core-removing" not in done, done
    assert os.path.islink(root / "windowsfilter/core-removing")
    checked = run_cli(*opt, "check", root=root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    path = run_cli(*opt, "mount", "app", root=root, check=True).stdout.decode().strip()
    try:
        assert (Path(path) / "Windows/win.ini").read_bytes() == b"core"
    finally:
        run_cli(*opt, "unmount", "app", root=root, check=True)


def test_a_base_image_whose_folder_went_is_removed_without_leftovers(tmp_path):
    """Its registration (the link into the home and the id folder) goes with its record, though
    the link dangles; cleanup then finds nothing."""
    import shutil

    from tests.conftest import run_cli

    images = _base_images(tmp_path)
    root = tmp_path / "cli-root"
    listed = json.loads(run_cli("--opt", f"base_images={images}", "base-images", "--json", root=root,
                                driver="windowsfilter").stdout)
    nano = next(i for i in listed if i["Name"] == "NanoServer")
    shutil.rmtree(images / "CN=Microsoft_NanoServer_10.0.17763.1")
    run_cli("remove", nano["ID"], root=root, check=True)
    home = root / "windowsfilter"
    kept = [i["ID"] for i in listed if i["Name"] != "NanoServer"]
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == sorted(
        [*kept, "CN=Microsoft_WindowsServerCore_10.0.17763.1"])
    assert run_cli("cleanup", root=root).stdout == b""


def test_a_layer_named_as_a_base_images_folder_is_refused_and_leaves_the_image_whole(tmp_path):
    from tests.conftest import run_cli

    images, taken = tmp_path / "images", "nanoserver"  # a folder name that is a valid layer id
    (images / taken / "Files/Windows").mkdir(parents=True)
    (images / taken / "Files/Windows/win.ini").write_bytes(b"NanoServer")
    (images / taken / "UtilityVM/Files").mkdir(parents=True)
    (images / taken / "image.json").write_text(json.dumps({"name": "NanoServer", "version": "10.0.19042.1"}))
    root = tmp_path / "cli-root"
    opt = ("--opt", f"base_images={images}")
    listed = json.loads(run_cli(*opt, "base-images", "--json", root=root, driver="windowsfilter").stdout)
    nano = next(i for i in listed if i["Name"] == "NanoServer")
    assert run_cli(*opt, "exists", taken, root=root).returncode == 3  # no layer of that id
    for mounted in (False, True):
        if mounted:
            run_cli(*opt, "mount", nano["ID"], root=root, check=True)
        made = run_cli(*opt, "create", taken, root=root)
        assert made.returncode == 4 and made.stderr.count(b"\n") == 1, made.stderr
        assert run_cli(*opt, "layers", root=root).returncode == 0  # the store still opens
        if mounted:
            run_cli(*opt, "unmount", nano["ID"], root=root, check=True)
        path = run_cli(*opt, "mount", nano["ID"], root=root, check=True).stdout.decode().strip()
        try:
            assert (Path(path) / "Windows/win.ini").read_bytes() == b"NanoServer"
        finally:
            run_cli(*opt, "unmount", nano["ID"], root=root, check=True)


# ----- the shared extractor and exporter's guarantees, in the Windows format -------------------------


def test_a_path_thousands_of_levels_deep_is_made_without_recursion(wstore):
    # 1,500 missing parents below Files/: made one after the other, never one call per level.
    deep = "Files/" + "/".join(["d"] * 1500) + "/f"
    import_entries(wstore, "deep", [wingen.WinDir("Files"), wingen.WinFile(deep, b"bottom")])
    home = wstore.driver.resolve("deep")
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:  # read relative to an fd: the whole path is longer than a path may be
        for comp in deep.split("/")[:-1]:
            sub = os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"bottom"
    finally:
        os.close(fd)
    wstore.remove("deep")  # the store's removal is not recursive (pytest's would be)
    assert not os.path.exists(home)


def test_a_file_that_shrinks_while_exported_is_padded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = tmp_path / "layer" / "Files"
    files.mkdir(parents=True)
    (files / "f").write_bytes(b"short")
    (files / "g").write_bytes(b"next")
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        # As if the file were truncated between the fstat and the read.
        st = real_fstat(fd)
        fields = list(st)
        fields[6] += 3 if st.st_size == 5 else 0  # st_size
        extra = ("st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_rdev", "st_blocks")
        return os.stat_result(fields, {k: getattr(st, k) for k in extra})

    out = io.BytesIO()
    changes = [Change("/f", ChangeKind.ADD), Change("/g", ChangeKind.ADD)]
    monkeypatch.setattr(os, "fstat", stale_fstat)
    winlayer.export(str(files), changes, (str(tmp_path / "layer"),), out, own_extras=False)
    monkeypatch.undo()
    reader = TarReader(io.BytesIO(out.getvalue()))
    contents = {}
    while (e := reader.next()) is not None:
        contents[e.name] = reader.read(e.size) if e.size else b""
    assert contents["Files/f"] == b"short\0\0\0"
    assert contents["Files/g"] == b"next"
