"""`vdot plan`'s start-up checks on libtpu topologies (nothing compiled): the per-host layout, meshes that split
physical axes, and paths the workers cannot reach, refused in one line naming the hosts."""

import os

import pytest
from absl import flags

from test_gs_workdir import bucket  # noqa: F401 -- an in-memory gs:// file system
from vdot_jax.cli import main as vdot
from vdot_jax.parallel.mesh import make_mesh, split_axes, topology_devices
from vdot_jax.train.config import load_config
from vdot_jax.train.preflight import path_problems

if os.environ.get("CI"):  # CI installs the test extra, which has libtpu: a missing one must fail, not skip
    import libtpu  # noqa: F401
else:
    libtpu = pytest.importorskip("libtpu", reason="TPU topologies need libtpu (pip install '.[tpu]')")

flags.FLAGS.mark_as_parsed()
ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _plan(capsys, *args):
    code = vdot(["plan", "--config", TINY, "--check-only", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_prints_every_hosts_rows_on_v5p_and_refuses_a_local_path_in_one_line(capsys, tmp_path):
    mesh = ["--topology", "v5p:4x4x4", "--mesh", "fsdp=16,context=4", "--config.data.batch_size=16"]
    code, out, err = _plan(capsys, *mesh)
    assert code == 0, err
    table = out[out.index("per-host layout: 16 host(s)"):].splitlines()
    rows = {int(line.split()[0]): line.split("[", 1)[1] for line in table[2:18]}
    assert rows[0] == "0, 4]" and rows[1] == "0, 4]" and rows[2] == "8, 12]"  # libtpu's torus order
    assert "0-1" in table[2] and "nothing compiled" in out
    # a local manifest, unreadable from the 16 workers: one line naming the hosts and the path, nothing compiled
    manifest = tmp_path / "train.csv"
    manifest.write_text("caption,video\na cat,cat.mp4\n")
    code, out, err = _plan(capsys, *mesh, "--config.data.source=manifest", f"--config.data.manifest={manifest}")
    assert code == 2 and "per-host layout" in out and "nothing compiled" not in out
    assert "every host reads from all of it" in out  # no per-host data shards: all hosts need the whole data
    assert err.strip().splitlines() == [f"vdot plan: error: hosts 0-15 cannot reach data.manifest {manifest}: a local "
                                        "path is on one machine's disk only; use gs://... or a path under a mount "
                                        "every worker has (vdot plan --shared-mount PREFIX)"]
    # ... reachable under a mount every worker has (and its rows' files too)
    code, out, err = _plan(capsys, *mesh, "--config.data.source=manifest", f"--config.data.manifest={manifest}",
                           "--shared-mount", str(tmp_path), "--workdir", str(tmp_path / "run"))
    assert code == 0, err
    assert "paths: 2 checked for 16 host(s) (data.manifest, workdir)" in out


def test_path_rules(tmp_path):
    c = load_config(TINY)
    c.data.source, c.data.manifest = "manifest", str(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text("caption,video\na cat,/elsewhere/cat.mp4\n")
    c.model.teacher = str(tmp_path / "missing_teacher")
    # one host: local paths are read here, so they must exist
    assert path_problems(c, 1) == [f"host 0 cannot read model.teacher {tmp_path}/missing_teacher: it does not exist"]
    # many hosts: the shared mount makes them reachable, but the manifest's rows name a file outside it
    problems = path_problems(c, 4, shared=(str(tmp_path),))
    assert problems[0] == f"hosts 0-3 cannot read model.teacher {tmp_path}/missing_teacher: it does not exist " \
                          f"(under the shared mount {tmp_path})"
    assert problems[1].startswith("hosts 0-3 cannot reach data.manifest row 1: /elsewhere/cat.mp4: a local path")
    (tmp_path / "missing_teacher").mkdir()
    c.train.compile_cache = str(tmp_path / "cache")  # an output: need not exist yet
    assert path_problems(c, 4, shared=(str(tmp_path), "/elsewhere")) == []
    assert path_problems(c, 4, shared=(str(tmp_path) + "x",))[0].startswith("hosts 0-3 cannot reach model.teacher")


def test_meshes_that_split_physical_axes_build_and_plan_says_so(capsys):
    whole = make_mesh("fsdp=16,context=4", None, topology_devices("v5p:4x4x4"))
    assert split_axes(whole) == {}  # 16 = 4x4 and 4 are whole physical axes
    split = make_mesh("fsdp=8,context=2", None, topology_devices("v6e:4x4"))  # jax alone: NotImplementedError
    assert dict(split.shape) == {"data": 1, "fsdp": 8, "context": 2, "tensor": 1}
    assert sorted({d.id for d in split.devices.flat}) == list(range(16))
    assert set(split_axes(split)) == {"fsdp", "context"}
    code, out, err = _plan(capsys, "--topology", "v6e:4x4", "--mesh", "fsdp=8,context=2")
    assert code == 0, err
    assert "ICI: fsdp=8 runs on 2 of the 4 chips of physical axis" in out


def test_a_mesh_on_part_of_a_slice_is_refused_in_one_line():
    from vdot_jax.parallel.mesh import MeshError

    with pytest.raises(MeshError, match=r"^the 6 TPU devices do not form a whole slice or a block of it") as e:
        make_mesh("fsdp=3,context=2", None, topology_devices("v6e:4x4")[:6])
    assert "\n" not in str(e.value)


def test_gs_paths_must_exist_and_outputs_need_their_bucket(bucket):  # noqa: F811 -- the in-memory gs:// fixture
    from etils import epath

    epath.Path("gs://bucket/README").write_text("")  # the bucket exists
    c = load_config(TINY)
    c.model.teacher = "gs://bucket/models/teacher"
    c.train.compile_cache = "gs://bucket/cache"  # an output: need not exist yet, its bucket must
    assert path_problems(c, 16, workdir="gs://other/run") == [
        "model.teacher gs://bucket/models/teacher does not exist",
        "workdir gs://other/run is in gs://other, which does not exist"]
    (epath.Path("gs://bucket/models/teacher") / "config.json").write_text("{}")
    (epath.Path("gs://other/keep")).write_text("")
    assert path_problems(c, 16, workdir="gs://other/run") == []
