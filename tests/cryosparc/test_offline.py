"""Offline `pupick_cryosparc pick/train`: exposures .cs + project directory in, particles .cs (or model) out."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from cryosparc.dataset import Dataset
from cs_project import PICKER_FIELDS, DEMO, DIAMETER_PX, NAMES, exposure_dataset, make_project

from pupick.adapters.cryosparc import read_exposures, read_particles
from pupick.core.evaluate import evaluate
from pupick.core.io import read_micrograph, write_mrc
from pupick.cryosparc.cli import cli, main

HELD_OUT = "312_10028"  # the session model never saw it (tests/conftest.py)


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_main(args: list[str], capsys) -> tuple[int, str]:
    """The console entry point, as a user meets it: exit status and stderr."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def picked(cs_project, trained_model, tmp_path_factory, demo_dir):
    """One offline pick of the five bundled micrographs, with a plot and an evaluation against the labels."""
    out = tmp_path_factory.mktemp("offline") / "picks" / "particles.cs"
    output = run_cli(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
                      "--model", str(trained_model), "-o", str(out), "--plot", str(out.with_suffix(".png")),
                      "--labels", str(demo_dir / "particles.csv"), "--device", "cpu"])
    return out, output


def test_cli_reports_and_writes(picked):
    out, output = picked
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 10_000
    assert re.search(r"picked \d+ particles on 5 of 5 micrographs", output)
    assert re.search(r"AP 0\.\d{3}, best F1", output)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_particles_cs_fields_and_dtypes(picked, cs_project):
    dset = Dataset.load(picked[0])
    descr = {f[0]: np.dtype([tuple(f)]) for f in dset.descr()}
    assert set(descr) == {"uid"} | {f[0] for f in PICKER_FIELDS}
    for field in PICKER_FIELDS:  # a real cryoSPARC picker's types, not pupick's own list
        assert descr[field[0]] == np.dtype([field]), field
    n = len(dset)
    assert n > 100
    uids = np.asarray(dset["uid"])
    assert len(np.unique(uids)) == n
    mic_uids = np.asarray(dset["location/micrograph_uid"])
    assert set(mic_uids.tolist()) == set(cs_project.uids.tolist())
    # micrograph_path is the exposure's own path (relative to the project), paired with the right uid
    path_of = dict(zip(cs_project.uids.tolist(), cs_project.rel_paths))
    assert [path_of[u] for u in mic_uids.tolist()] == list(dset["location/micrograph_path"])
    assert (np.asarray(dset["location/micrograph_shape"]) == [1024, 1024]).all()
    for f in ("location/center_x_frac", "location/center_y_frac"):
        v = np.asarray(dset[f])
        assert ((v >= 0) & (v <= 1)).all() and v.std() > 0.1
    power = np.asarray(dset["pick_stats/power"], dtype=float)
    assert power.min() >= -6.0  # the default threshold
    np.testing.assert_allclose(dset["pick_stats/ncc_score"], 1 / (1 + np.exp(-power)), rtol=1e-5, atol=1e-7)
    assert np.asarray(dset["location/micrograph_psize_A"]) == pytest.approx(5.36)


def test_picks_land_on_labelled_particles(picked, cs_project, demo_labels):
    picks = read_particles(picked[0], read_exposures(cs_project.exposures_cs))
    assert set(picks["micrograph"]) == set(NAMES)
    radius = DIAMETER_PX / 2
    everywhere = evaluate(picks, demo_labels, radius)
    held_out = evaluate(picks, demo_labels, radius, micrographs=[HELD_OUT])
    # chance: picks scattered over the micrographs, as many as ours (same count per micrograph)
    rng = np.random.default_rng(0)
    scattered = picks.assign(x=rng.uniform(0, 1024, len(picks)), y=rng.uniform(0, 1024, len(picks)))
    chance = evaluate(scattered, demo_labels, radius)
    assert everywhere.ap > 0.5 and held_out.ap > 0.4, (everywhere.ap, held_out.ap)
    assert everywhere.ap > 3 * chance.ap
    assert everywhere.precision > 0.5 and everywhere.recall > 0.5


def test_offline_pick_is_deterministic_and_non_square(tmp_path, trained_model):
    """A 1000 x 700 crop: fractions use [ny, nx] the right way round; two runs write identical files."""
    root = tmp_path / "P2"
    (root / "J5" / "imported").mkdir(parents=True)
    image = read_micrograph(DEMO / "micrographs" / f"{HELD_OUT}.mrc").image[:700, :1000]
    rel = "J5/imported/4242_crop_rigid_aligned.mrc"
    write_mrc(root / rel, image)
    exposure_dataset([rel], [(700, 1000)], np.array([4242], dtype=np.uint64)).save(root / "exposures.cs")
    outs = []
    for name in ("a.cs", "b.cs"):
        out = tmp_path / "out" / name
        run_cli(["pick", "--exposures", str(root / "exposures.cs"), "--project-dir", str(root),
                 "--model", str(trained_model), "-o", str(out), "--device", "cpu"])
        outs.append(Dataset.load(out))
    a, b = outs
    for field in a.fields():
        if field != "uid":
            assert np.array_equal(np.asarray(a[field]), np.asarray(b[field])), field
    assert len(a) > 10
    assert (np.asarray(a["location/micrograph_shape"]) == [700, 1000]).all()
    x = np.asarray(a["location/center_x_frac"], dtype=float) * 1000
    y = np.asarray(a["location/center_y_frac"], dtype=float) * 700
    assert x.max() > 700 and y.max() <= 700  # a swap would put x beyond 700 out of range or squash y
    picks = read_particles(tmp_path / "out" / "a.cs")
    assert list(picks["micrograph"].unique()) == ["crop"]
    np.testing.assert_allclose(picks["x"], x, atol=1e-3)


def test_blob_picker_needs_no_model(tmp_path, cs_project):
    root = cs_project.root
    one = tmp_path / "one.cs"
    exposure_dataset(cs_project.rel_paths[:1], [(1024, 1024)], cs_project.uids[:1]).save(one)
    out = tmp_path / "blob.cs"
    output = run_cli(["pick", "--exposures", str(one), "--project-dir", str(root), "--method", "blob",
                      "--diameter-px", str(DIAMETER_PX), "-o", str(out)])
    assert "on 1 of 1 micrographs" in output
    assert len(Dataset.load(out)) > 10


def test_streamed_cs_equals_the_whole_table_save(tmp_path, cs_project):
    """The offline .cs is written a micrograph at a time; read back, it is what one Dataset of every pick saved with
    cryosparc-tools gives: the same fields, dtypes, rows and order (and a plain .npy numpy reads)."""
    from pupick.adapters.cryosparc import save_dataset
    from pupick.core.config import PickConfig
    from pupick.cryosparc.picking import pick_exposures

    out = tmp_path / "streamed.cs"
    run_cli(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
             "--method", "blob", "--diameter-px", str(DIAMETER_PX), "-o", str(out)])
    config = PickConfig.from_settings({"method": "blob", "diameter_px": DIAMETER_PX})
    whole = pick_exposures(read_exposures(cs_project.exposures_cs), cs_project.root, None, config,
                           log=lambda _: None, salt=out.name)
    save_dataset(whole.particles, tmp_path / "whole.cs")
    a, b = Dataset.load(out), Dataset.load(tmp_path / "whole.cs")
    assert len(a) == len(b) > 1000 and a.descr() == b.descr()
    for field in b.fields():
        assert np.array_equal(np.asarray(a[field]), np.asarray(b[field])), field
    assert np.load(out).dtype == np.load(tmp_path / "whole.cs").dtype  # the same on-disk layout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_particle_writer_holds_one_chunk_and_keeps_input_order(tmp_path):
    """ParticleCsWriter: chunks appended give one .cs in their order; an empty run is a valid empty .cs; a failure
    inside leaves no file."""
    import pandas as pd

    from pupick.adapters.cryosparc import particles_cs_writer, particles_dataset

    exposures = pd.DataFrame({"micrograph": ["a", "bé"], "path": ["J1/a.mrc", "J1/bé_longer.mrc"],
                              "uid": np.array([5, 7], dtype=np.uint64), "ny": [100.0] * 2, "nx": [200.0] * 2,
                              "pixel_size": [1.5] * 2})
    chunks = [pd.DataFrame({"micrograph": m, "x": [1.0 + i, 2.0 + i], "y": [3.0, 4.0 + i], "score": [0.5, -1.0],
                            "path": p}) for i, (m, p) in enumerate(zip(exposures["micrograph"], exposures["path"]))]
    with particles_cs_writer(tmp_path / "s.cs", exposures["path"]) as writer:
        for chunk in chunks:
            writer.append(particles_dataset(chunk, exposures))
    got = Dataset.load(tmp_path / "s.cs")
    assert list(got["location/micrograph_path"]) == ["J1/a.mrc"] * 2 + ["J1/bé_longer.mrc"] * 2
    np.testing.assert_allclose(np.asarray(got["location/center_x_frac"]), [1 / 200, 2 / 200, 2 / 200, 3 / 200],
                               rtol=1e-6)
    with particles_cs_writer(tmp_path / "empty.cs", exposures["path"]):
        pass
    assert len(Dataset.load(tmp_path / "empty.cs")) == 0
    with pytest.raises(RuntimeError), particles_cs_writer(tmp_path / "failed.cs", exposures["path"]) as writer:
        writer.append(particles_dataset(chunks[0], exposures))
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.cs", "s.cs"]


def test_exposures_given_as_output_plus_passthrough(tmp_path, cs_project):
    """cryoSPARC splits an output over two .cs files; --exposures twice joins them by uid."""
    full = exposure_dataset(cs_project.rel_paths[:2], [(1024, 1024)] * 2, cs_project.uids[:2])
    full.filter_prefixes(["ctf"], copy=True).save(tmp_path / "J4_exposures_accepted.cs")
    full.filter_prefixes(["micrograph_blob"], copy=True).save(tmp_path / "J4_passthrough_exposures_accepted.cs")
    out = tmp_path / "p.cs"
    output = run_cli(["pick", "--exposures", str(tmp_path / "J4_exposures_accepted.cs"),
                      "--exposures", str(tmp_path / "J4_passthrough_exposures_accepted.cs"),
                      "--project-dir", str(cs_project.root), "--method", "blob", "--diameter-px", str(DIAMETER_PX),
                      "-o", str(out)])
    assert "on 2 of 2 micrographs" in output
    assert set(np.asarray(Dataset.load(out)["location/micrograph_uid"]).tolist()) == set(cs_project.uids[:2].tolist())


def test_train_offline_from_particles_cs(tmp_path, cs_project, demo_labels):
    """Labels written as a cryoSPARC particles .cs train a model on the exposures (a tiny run)."""
    from pupick.adapters.cryosparc import write_particles
    from pupick.core.modelfile import load_model

    exposures = read_exposures(cs_project.exposures_cs)
    two = demo_labels[demo_labels["micrograph"].isin(NAMES[:2])]
    write_particles(two, tmp_path / "labels.cs", exposures)
    model = tmp_path / "model.pt"
    output = run_cli(["train", "--exposures", str(cs_project.exposures_cs), "--particles", str(tmp_path / "labels.cs"),
                      "--project-dir", str(cs_project.root), "-o", str(model), "--diameter-px", str(DIAMETER_PX),
                      "--units", "8", "--epochs", "1", "--steps-per-epoch", "2", "--test-split", "0.5",
                      "--expected-particles", "150", "--device", "cpu"])
    assert "training on %d labelled particles on 2 of 5 micrographs" % len(two) in output
    assert re.search(r"validation AP \d\.\d{3} at epoch 1; model saved to", output)
    loaded = load_model(model)
    assert loaded.config["diameter_px"] == pytest.approx(DIAMETER_PX)


def test_train_offline_fine_tunes_the_general_model(tmp_path, cs_project, demo_labels):
    from pupick.adapters.cryosparc import write_particles
    from pupick.core.modelfile import load_model

    exposures = read_exposures(cs_project.exposures_cs)
    write_particles(demo_labels[demo_labels["micrograph"].isin(NAMES[:1])], tmp_path / "labels.cs", exposures)
    model = tmp_path / "model.pt"
    run_cli(["train", "--exposures", str(cs_project.exposures_cs), "--particles", str(tmp_path / "labels.cs"),
             "--project-dir", str(cs_project.root), "-o", str(model), "--diameter-px", str(DIAMETER_PX),
             "--init", "general", "--epochs", "1", "--steps-per-epoch", "2", "--expected-particles", "150",
             "--device", "cpu"])
    cfg = load_model(model).config
    assert cfg["provenance"]["train_config"]["init"] == "general"
    assert cfg["factor"] == pytest.approx(DIAMETER_PX / load_model("general").config["grid_diameter"])


# ---------------------------------------------------------------- bad input: one line, exit 1, nothing written


def test_wrong_project_dir(tmp_path, cs_project, trained_model, capsys):
    out = tmp_path / "p.cs"
    code, err = run_main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(tmp_path),
                          "--model", str(trained_model), "-o", str(out)], capsys)
    assert code == 1
    assert err.startswith("pupick_cryosparc: error: ") and err.count("\n") == 1
    assert "none of the 5 micrographs exist under" in err and "project directory" in err
    assert not out.exists()


def test_exposures_file_that_is_not_exposures(tmp_path, cs_project, capsys):
    dset = Dataset({"uid": np.arange(2, dtype=np.uint64)})
    dset.add_fields([("movie_blob/path", "O")])
    dset.save(tmp_path / "movies.cs")
    code, err = run_main(["pick", "--exposures", str(tmp_path / "movies.cs"), "--project-dir", str(cs_project.root),
                          "--method", "blob", "--diameter-px", "56", "-o", str(tmp_path / "p.cs")], capsys)
    assert code == 1 and "missing field(s) micrograph_blob/path" in err and err.count("\n") == 1


def test_shape_disagreement_skips_that_micrograph(tmp_path, cs_project):
    root = tmp_path / "P3"
    project = make_project(root, NAMES[:2])
    bad = exposure_dataset(project.rel_paths, [(1024, 1024), (2048, 1024)], project.uids)
    bad.save(project.exposures_cs)
    out = tmp_path / "p.cs"
    result = CliRunner().invoke(cli, ["pick", "--exposures", str(project.exposures_cs), "--project-dir", str(root),
                                      "--method", "blob", "--diameter-px", "56", "-o", str(out)])
    assert "image is 1024 x 1024 px but the exposure says 1024 x 2048 px" in result.output
    assert "on 1 of 2 micrographs" in result.output
    assert result.exit_code != 0 and "1 of 2 micrograph(s) could not be picked" in str(result.exception)
    assert set(np.asarray(Dataset.load(out)["location/micrograph_uid"]).tolist()) == {int(project.uids[0])}


def test_an_unreadable_micrograph_fails_the_run_and_keeps_the_others(tmp_path, capsys):
    """The README promises a non-zero exit when a micrograph cannot be read; the others' particles are kept."""
    root = tmp_path / "P3"
    project = make_project(root, NAMES[:3])
    for rel in project.rel_paths[1:]:  # two broken micrographs: a truncated one and a missing one
        (root / rel).unlink()
    (root / project.rel_paths[1]).write_bytes((DEMO / "micrographs" / f"{NAMES[1]}.mrc").read_bytes()[:3000])
    out = tmp_path / "p.cs"
    code, err = run_main(["pick", "--exposures", str(project.exposures_cs), "--project-dir", str(root),
                          "--method", "blob", "--diameter-px", "56", "-o", str(out)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "2 of 3 micrograph(s) could not be picked" in err
    assert project.rel_paths[1] in err and project.rel_paths[2] in err  # every failed micrograph is named
    assert set(np.asarray(Dataset.load(out)["location/micrograph_uid"]).tolist()) == {int(project.uids[0])}


def test_offline_needs_output_and_project_dir(cs_project, capsys):
    code, err = run_main(["pick", "--exposures", str(cs_project.exposures_cs), "--method", "blob",
                          "--diameter-px", "56"], capsys)
    assert code == 1 and "offline mode needs --exposures EXPOSURES.cs --project-dir DIR -o PARTICLES.cs" in err


def test_model_required_for_cnn(cs_project, tmp_path, capsys):
    code, err = run_main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
                          "-o", str(tmp_path / "p.cs")], capsys)
    assert code == 2 and "--model is required" in err  # bad usage


def test_version_is_plain_semver(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_help_lists_both_modes():
    out = run_cli(["pick", "--help"])
    for option in ("--exposures", "--project-dir", "--model", "--url", "--host", "--base-port", "--license",
                   "--email", "--project", "--workspace"):
        assert option in out
    assert "CRYOSPARC_BASE_URL" in out


def test_output_may_not_overwrite_the_exposures(cs_project, tmp_path, capsys):
    copy = tmp_path / "exposures.cs"
    copy.write_bytes(cs_project.exposures_cs.read_bytes())
    code, err = run_main(["pick", "--exposures", str(copy), "--project-dir", str(cs_project.root),
                          "--method", "blob", "--diameter-px", "56", "-o", str(copy)], capsys)
    assert code == 1 and "is an input of this command" in err
    assert copy.read_bytes() == cs_project.exposures_cs.read_bytes()


@pytest.mark.parametrize("which", ["labels", "plot"])
def test_no_output_replaces_an_input_or_another_kind_of_file(cs_project, tmp_path, capsys, demo_dir, which):
    labels = tmp_path / "labels.csv"
    labels.write_bytes((demo_dir / "particles.csv").read_bytes())
    args = ["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
            "--method", "blob", "--diameter-px", "56", "--labels", str(labels)]
    if which == "labels":  # the particles over a text file that happens to end in .cs
        labels.with_suffix(".cs").write_text("notes\n")
        args += ["-o", str(labels.with_suffix(".cs"))]
        expected = "exists and is a text file, not a cryoSPARC .cs file"
    else:  # the plot over the labels
        args += ["-o", str(tmp_path / "p.cs"), "--plot", str(labels)]
        expected = "is an input of this command"
    code, err = run_main(args, capsys)
    assert code == 1 and expected in err and err.count("\n") == 1
    assert labels.read_bytes() == (demo_dir / "particles.csv").read_bytes()
    assert not (tmp_path / "p.cs").exists()


def test_train_offline_refuses_to_write_over_its_particles(cs_project, tmp_path, capsys, demo_labels):
    from pupick.adapters.cryosparc import write_particles

    particles = tmp_path / "particles.cs"
    write_particles(demo_labels, particles, read_exposures(cs_project.exposures_cs))
    before = particles.read_bytes()
    code, err = run_main(["train", "--exposures", str(cs_project.exposures_cs), "--particles", str(particles),
                          "--project-dir", str(cs_project.root), "-o", str(particles), "--diameter-px", "56",
                          "--epochs", "1", "--steps-per-epoch", "1"], capsys)
    assert code == 1 and "is an input of this command" in err and particles.read_bytes() == before


def test_cluster_option_is_checked_before_any_work(tmp_path, cs_project, trained_model, capsys):
    out = tmp_path / "p.cs"
    code, err = run_main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
                          "--model", str(trained_model), "-o", str(out), "--cluster", "tcp://nohost"], capsys)
    assert code == 2 and "tcp://HOST:PORT" in err and not out.exists()
    code, err = run_main(["pick", "--exposures", str(cs_project.exposures_cs), "--project-dir", str(cs_project.root),
                          "--model", str(trained_model), "-o", str(out), "--cluster-workers", "2"], capsys)
    assert code == 2 and "--cluster-workers needs --cluster" in err
