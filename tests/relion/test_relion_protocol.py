"""RELION External protocol parsing, version detection, node labels and the output-nodes file."""
from __future__ import annotations

from pathlib import Path

import pytest
import starfile

from pupick.core.errors import InputError
from pupick.relion.nodes import LABELS, OUTPUT_NODES, coordinates_relpath, detect_version, node_name, write_output_nodes
from pupick.relion.pick import PARAMS as PICK_PARAMS
from pupick.relion.protocol import check_inputs, convert_params, device_spec, find_out_dir, parse_external
from pupick.relion.train import PARAMS as TRAIN_PARAMS


def test_parse_relion_command_line():
    argv = ["--o", "External/job007/", "--in_mics", "CtfFind/job003/micrographs_ctf.star", "--model",
            "External/job006/model.pt", "--threshold", "-2.5", "--gpu", "--max_picks", "300", "--j", "4",
            "--pipeline_control", "External/job007/"]
    args = parse_external(argv)
    assert args.out_dir == Path("External/job007")
    assert args.out_name == "External/job007/"
    assert args.inputs == {"in_mics": "CtfFind/job003/micrographs_ctf.star"}
    assert args.threads == 4
    # a negative number is a value, a label followed by another label is a bare flag
    assert args.params == {"model": "External/job006/model.pt", "threshold": "-2.5", "gpu": "", "max_picks": "300"}
    values = convert_params(args.params, PICK_PARAMS, "pupick_relion_pick")
    assert values["threshold"] == -2.5 and values["max_picks"] == 300 and values["gpu"] == ""
    assert values["diameter"] is None and values["min_distance"] is None


def test_unknown_parameter_is_named_with_the_accepted_ones():
    args = parse_external(["--o", "External/job007/", "--modle", "m.pt", "--j", "1"])
    with pytest.raises(InputError, match=r"unknown parameter\(s\) modle .*accepts: model, diameter"):
        convert_params(args.params, PICK_PARAMS, "pupick_relion_pick")


@pytest.mark.parametrize("argv, message", [
    (["--o", "E/job1/", "--threshold", "high"], "threshold: 'high' is not a number"),
    (["--o", "E/job1/", "--max_picks", "2.5"], "max_picks: '2.5' is not a whole number"),
    (["--o", "E/job1/", "--max_picks", "0"], "max_picks: must be >= 1"),
    (["--o", "E/job1/", "--diameter", "-10"], "diameter: must be positive"),
    (["--o", "E/job1/", "--model"], "model has no value"),
])
def test_bad_values_name_the_parameter(argv, message):
    with pytest.raises(InputError, match=message):
        convert_params(parse_external(argv).params, PICK_PARAMS, "pupick_relion_pick")


def test_train_parameters_convert():
    args = parse_external(["--o", "External/job006/", "--in_coords", "ManualPick/job004/manualpick.star",
                           "--in_mics", "m.star", "--diameter", "300", "--expected_particles", "90", "--epochs", "3",
                           "--arch", "resnet8", "--test_split", "0.25", "--j", "2"])
    values = convert_params(args.params, TRAIN_PARAMS, "pupick_relion_train")
    assert values["diameter"] == 300.0 and values["expected_particles"] == 90.0 and values["epochs"] == 3
    assert values["arch"] == "resnet8" and values["test_split"] == 0.25
    with pytest.raises(InputError, match="test_split: must be below 1"):
        convert_params({"test_split": "1.5"}, TRAIN_PARAMS, "pupick_relion_train")


@pytest.mark.parametrize("argv, message", [
    (["--in_mics", "m.star"], r"--o .* is missing"),
    (["--o", "E/job1/", "stray"], "unexpected argument 'stray'"),
    (["--o", "E/job1/", "--threshold", "1", "--threshold", "2"], "--threshold is given twice"),
    (["--o", "E/job1/", "--j", "x"], "j: 'x' is not a whole number"),
    (["--o", "E/job1/", "--in_mics"], "--in_mics needs a file name"),
])
def test_malformed_command_lines(argv, message):
    with pytest.raises(InputError, match=message):
        parse_external(argv)


def test_out_dir_is_found_even_when_the_rest_is_malformed():
    assert find_out_dir(["stray", "--o", "External/job003/", "--threshold", "1", "--threshold"]) == "External/job003/"
    assert find_out_dir(["--o=External/job003/"]) == "External/job003/"
    assert find_out_dir(["--in_mics", "a.star"]) is None


def test_inputs_the_program_does_not_read_are_refused():
    args = parse_external(["--o", "E/job1/", "--in_mics", "m.star", "--in_parts", "p.star"])
    check_inputs(args, ("in_mics", "in_parts"), "x")
    with pytest.raises(InputError, match="does not read --in_parts; it reads --in_mics"):
        check_inputs(args, ("in_mics",), "pupick_relion_pick")


@pytest.mark.parametrize("device, gpu, expected", [
    (None, None, "auto"), ("cpu", None, "cpu"), (None, "", "cuda"), (None, "1", "cuda:1"), (None, "0,1", "cuda:0"),
])
def test_device_or_gpu(device, gpu, expected):
    assert device_spec(device, gpu) == expected


def test_device_and_gpu_together_are_refused():
    with pytest.raises(InputError, match="either parameter device or gpu"):
        device_spec("cpu", "0")


@pytest.mark.parametrize("head, major", [("# version 50001", 5), ("# version 30001", 4), ("#   version 50002", 5)])
def test_version_from_default_pipeline(tmp_path, head, major):
    (tmp_path / "default_pipeline.star").write_text(f"\n{head}\n\ndata_pipeline_general\n")
    assert detect_version(tmp_path)[0] == major


def test_version_fallbacks_and_override(tmp_path):
    version, how = detect_version(tmp_path)
    assert version == 4 and "not found" in how
    (tmp_path / "default_pipeline.star").write_text("\ndata_pipeline_general\n")
    assert detect_version(tmp_path)[0] == 4
    (tmp_path / "default_pipeline.star").write_text("\n# version 50001\n")
    assert detect_version(tmp_path, "4.0")[0] == 4
    assert detect_version(tmp_path, "3.1")[0] == 4
    assert detect_version(tmp_path, "5")[0] == 5
    with pytest.raises(InputError, match="relion_version: '6' is not 4 or 5"):
        detect_version(tmp_path, "6")


@pytest.mark.parametrize("version, header", [(4, "# version 30001"), (5, "# version 50001")])
def test_output_nodes_file(tmp_path, version, header):
    nodes = [(node_name("External/job007/", "autopick.star"), LABELS[version]["coords"]),
             (node_name("External/job007", "model.pt"), LABELS[version]["model"])]
    path = write_output_nodes(tmp_path, nodes, version)
    assert path == tmp_path / OUTPUT_NODES
    assert header in path.read_text().splitlines()
    table = starfile.read(path, always_dict=True)["output_nodes"]
    assert list(table.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeTypeLabel"]
    assert table["rlnPipeLineNodeName"].tolist() == ["External/job007/autopick.star", "External/job007/model.pt"]
    assert table["rlnPipeLineNodeTypeLabel"].tolist() == [LABELS[version]["coords"], LABELS[version]["model"]]


def test_node_labels_per_version():
    assert LABELS[4]["coords"] == "MicrographsCoords.star.relion.autopick"
    assert LABELS[5]["coords"] == "MicrographCoordsGroup.star.relion.autopick"
    assert LABELS[4]["model"] == "ProcessData.sav.pupick.model"
    assert LABELS[5]["model"] == "ParamsData.sav.pupick.model"
    assert all(LABELS[v]["log"].startswith("LogFile.") for v in (4, 5))


@pytest.mark.parametrize("mic, expected", [
    ("MotionCorr/job002/Movies/061_10028.mrc", "Movies/061_10028_pupick.star"),
    ("MotionCorr/job002/Movies/day1/a.tif", "Movies/day1/a_pupick.star"),
    ("Import/job001/a.b.mrc", "a.b_pupick.star"),
    ("Micrographs/a.mrc", "Micrographs/a_pupick.star"),
    ("/data/run/a.mrc", "data/run/a_pupick.star"),
    ("../raw/a.mrc", "raw/a_pupick.star"),
])
def test_coordinate_file_inside_the_job(mic, expected):
    assert str(coordinates_relpath(mic)) == expected
