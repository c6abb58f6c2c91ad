"""The paper's data ships unchanged: every file under data/ (the wheel's lowrank_rlvr/paper_data/) is the upstream
file byte for byte (SHA256SUMS, recorded from the One-Shot RLVR repository at the commit data/NOTICE.md names), and
each one has its source and licence in the NOTICE."""

from __future__ import annotations

import hashlib

from lowrank_rlvr.shipped import data_dir, shipped_train_files


def test_every_shipped_file_is_the_upstream_file_and_has_its_notice():
    folder = data_dir()
    recorded = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
    shipped = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"NOTICE.md", "SHA256SUMS"}
    assert shipped == set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    notice = (folder / "NOTICE.md").read_text()
    assert all(f"`{name.split('/')[1]}`" in notice for name in recorded)
    assert "21ed529ec90002597c92aee957af1dd8166bb66c" in notice
    assert shipped_train_files() == ["dsr_sub", "pi1209_r128", "pi13_r128", "pi1_r128", "pi2_r128"]
