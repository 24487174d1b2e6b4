"""The service's security rules on their own: loopback, token files, bearer checks, data-root confinement."""
from __future__ import annotations

import os

import pytest

from pupick.core.errors import InputError
from pupick.core.service.security import DataRoots, Forbidden, bearer_ok, check_bind, is_loopback, read_token_file


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("gpu-box", False)])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback
    if not loopback:
        with pytest.raises(InputError, match="needs a token"):
            check_bind(host, None)
        check_bind(host, "t" * 20)


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cret-s3cret-s3cret\n")
    f.chmod(0o600)
    assert read_token_file(f) == "s3cret-s3cret-s3cret"
    f.chmod(0o640)
    with pytest.raises(InputError, match="readable by other users"):
        read_token_file(f)
    f.chmod(0o600)
    f.write_text("a\nb\n")
    with pytest.raises(InputError, match="one line"):
        read_token_file(f)
    with pytest.raises(InputError, match="cannot read"):
        read_token_file(tmp_path / "missing")
    assert bearer_ok("Bearer abc", "abc") and bearer_ok("bearer abc", "abc")
    assert not bearer_ok("Bearer abd", "abc") and not bearer_ok("Basic abc", "abc") and not bearer_ok(None, "abc")


def test_confinement(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.mrc").write_bytes(b"x")
    (outside / "b.mrc").write_bytes(b"x")
    (root / "link.mrc").symlink_to(outside / "b.mrc")
    (root / "inner.mrc").symlink_to(root / "sub" / "a.mrc")
    (tmp_path / "root2").symlink_to(root, target_is_directory=True)  # a root given through a symlink
    roots = DataRoots([tmp_path / "root2"])
    assert roots.confine(str(root / "sub" / "a.mrc")) == root / "sub" / "a.mrc"
    assert roots.confine("sub/a.mrc") == root / "sub" / "a.mrc"  # relative: from the (resolved) first root
    assert roots.confine(str(root / "inner.mrc")) == root / "inner.mrc"  # a symlink that stays inside is fine
    for bad in [str(outside / "b.mrc"), str(root / "link.mrc"), str(root / ".." / "outside" / "b.mrc"), "../x.mrc",
                str(tmp_path / "rootx" / "a.mrc"), "/"]:
        with pytest.raises(Forbidden):
            roots.confine(bad)
    assert roots.expand([str(root / "sub")]) == [str(root / "sub" / "a.mrc")]
    assert roots.expand([str(root / "sub" / "*.mrc")]) == [str(root / "sub" / "a.mrc")]
    with pytest.raises(Forbidden):
        roots.expand([str(root / "*.mrc")])  # the glob would match link.mrc, which leads out
    with pytest.raises(InputError, match="file name only"):
        roots.expand([str(root / "*" / "a.mrc")])
    with pytest.raises(Forbidden):
        roots.expand([str(root)])  # a directory listing meets link.mrc, which leads out
    mixed = root / "mixed"
    (mixed / "d.mrc").mkdir(parents=True)  # a directory with an image's name
    os.mkfifo(mixed / "f.mrc")  # never opened, never listed as a micrograph
    (mixed / "z.mrc").write_bytes(b"x")
    (mixed / "c.MRC").write_bytes(b"x")
    (mixed / "notes.txt").write_bytes(b"x")
    (mixed / "in.mrc").symlink_to(root / "sub" / "a.mrc")
    (mixed / "dangling.mrc").symlink_to(root / "gone.mrc")
    assert roots.expand([str(mixed)]) == [str(mixed / n) for n in ("c.MRC", "in.mrc", "z.mrc")]
    with pytest.raises(Forbidden, match="no --data-root"):
        DataRoots([]).confine(str(root / "sub" / "a.mrc"))
    assert not os.path.exists(root / "sub" / "b.mrc")
